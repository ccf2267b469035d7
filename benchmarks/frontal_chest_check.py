"""The frontal-chest check: its lung shape model fitted and its thresholds measured, its false-skip rate on the
shared chests, its catch rate on a challenge of what archives hold besides frontal chests, and its cost.

    python benchmarks/frontal_chest_check.py --fit          # cross-validate, write bundle/models/lung_shape.npz
    python benchmarks/frontal_chest_check.py                # the challenge and the cost, end to end
    python benchmarks/frontal_chest_check.py --real /work/challenge_real   # and real non-chest radiographs

``--fit``: the network-grid masks of the release model on the 669 chests of ``kaggle-lungs-512`` (and the 37 of
``cxr-real-sample``, at their own sizes) are scored by shape models fitted, five-fold, on the reference masks of the
other folds; ``review_above`` is set at the 98th percentile of those held-out scores (at most 5% of intact chests
flagged) and ``skip_above`` at twice the largest (no intact chest skipped, with room). The model written is fitted
on all 669 reference masks.

The challenge (default run): the 67 validation radiographs of the fixed split (never trained on), each also turned
90, 180 and 270 degrees, upside down, mirrored, cut to its upper or left half, inverted, and degraded as
``benchmarks/degraded.py`` keeps them (noise, blur, a free rotation by 30-90 degrees, gamma), written as PNG (no
header to go by), segmented by ``inference.json`` as users run it. Each mask's Dice against its reference mask,
turned the same way, is compared with what the run did: every mask with Dice below 0.5 must be flagged or skipped.
``--real DIR`` adds real radiographs of other body parts (a folder of DICOM/JPEG files; none are kept in the
repository, see ``benchmarks/README.md``), which must be skipped, each DICOM also as a PNG with no header. Then every
chest of ``kaggle-lungs-512`` and ``cxr-real-sample`` is segmented: none may be skipped, and at most 5% flagged for
their lung shape. The cost: the same run with the check off
(``--inputs#frontal_chest_only false``), timed in the same process, in alternation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import BUNDLE, REAL_SAMPLE, REPO, machine
from PIL import Image

KAGGLE = REPO.parent / "shared" / "data" / "kaggle-lungs-512"
SPLIT = BUNDLE / "configs" / "datalist_kaggle_lungs_512.json"
VARIANTS = {
    "upright": lambda a: a,
    "rotated 90": lambda a: np.rot90(a, 1),
    "rotated 180": lambda a: np.rot90(a, 2),
    "rotated 270": lambda a: np.rot90(a, 3),
    "upside down": lambda a: a[::-1],
    "mirrored": lambda a: a[:, ::-1],
    "upper half": lambda a: a[: a.shape[0] // 2],
    "left half": lambda a: a[:, : a.shape[1] // 2],
    "inverted": None,  # the image inverted, the mask as it is
}
KEPT_DEGRADATIONS = ("noise", "blur", "rotation", "gamma")


def pipeline():
    """The release model's path from a file to its kept lungs on the network's grid, as ``inference.json`` runs it,
    and train.json's path from an image and mask to the reference mask on that grid."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "write_overlay": False})
    preprocessing = parser.get_parsed_content("preprocessing")
    network_def = parser.get_parsed_content("network_def")
    network_def.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    network = parser.get_parsed_content("evaluator#network").eval()
    engine_post = parser.get_parsed_content("postprocessing")
    keep = parser.get_parsed_content("writer_postprocessing#transforms#0")
    training = ConfigParser()
    training.read_config(str(BUNDLE / "configs" / "train.json"))
    reference = training.get_parsed_content("validate#preprocessing")

    @torch.no_grad()
    def predict(path: str) -> tuple[np.ndarray, float]:
        """The kept lungs on the network's grid and their quality score."""
        item = preprocessing({"image": path})
        item["pred"] = network(item["image"][None])[0]
        item = keep(engine_post(item))
        return np.asarray(item["pred"][0]) >= keep.threshold, float(item["qc_score"])

    def truth(image: str, mask: str) -> np.ndarray:
        return np.asarray(reference({"image": image, "label": mask})["label"][0]) > 0

    return predict, truth


def cases() -> list[dict]:
    from scripts.data.datalist import prepare_datalist

    lists = prepare_datalist(str(KAGGLE), split_file=str(SPLIT))
    return lists["training"] + lists["validation"]


def fit(cache: Path) -> None:
    from scripts.io.weights import file_sha256
    from scripts.lung_shape import SHAPE_MODEL_FILE, LungShapeModel

    predict, truth = pipeline()
    weights = file_sha256(str(BUNDLE / "models" / "model.pt"))  # the cache holds this model's masks, no other's
    saved = np.load(cache) if cache.is_file() else {}
    if "weights" in saved and str(saved["weights"]) == weights:
        predicted, reference, real, quality = saved["predicted"], saved["reference"], saved["real"], saved["quality"]
    else:
        items = cases()
        real_images = sorted((REAL_SAMPLE / "images").glob("*.png")) if REAL_SAMPLE.is_dir() else []
        start = time.perf_counter()
        found = [predict(c["image"]) for c in items] + [predict(str(p)) for p in real_images]
        quality = np.array([q for _, q in found])
        predicted = np.stack([m for m, _ in found[: len(items)]])
        real = np.stack([m for m, _ in found[len(items) :]]) if real_images else np.zeros((0, 1, 1), bool)
        reference = np.stack([truth(c["image"], c["label"]) for c in items])
        print(f"{len(found)} predictions in {time.perf_counter() - start:.0f} s")
        np.savez_compressed(
            cache, predicted=predicted, reference=reference, real=real, quality=quality, weights=np.array(weights)
        )
    folds = np.arange(len(predicted)) % 5
    held_out = np.zeros(len(predicted))
    real_scores = []
    for fold in range(5):
        model = LungShapeModel.fit(reference[folds != fold])
        held_out[folds == fold] = [model.distance(m) for m in predicted[folds == fold]]
        real_scores.append([model.distance(m) for m in real])
    real_scores = np.max(real_scores, axis=0) if len(real) else np.zeros(0)
    every = np.concatenate([held_out, real_scores])
    review, skip = float(np.percentile(every, 98)), float(2 * every.max())
    print(
        f"held-out chest masks ({len(held_out)} kaggle, {len(real_scores)} real sample): "
        f"median {np.median(every):.2f}, 95th {np.percentile(every, 95):.2f}, 98th {review:.2f}, max {every.max():.2f}"
    )
    fractions = np.array([m.mean() for m in predicted] + [m.mean() for m in real])
    least = float(fractions.min())  # too little lung: below half the smallest share of lungs a chest got
    print(f"chests: lungs {least:.3f} of the grid at the least, quality {quality.min():.3f} at the lowest")
    model = LungShapeModel.fit(reference)
    model.review_above, model.skip_above, model.skip_below_fraction = review, skip, least / 2
    model.save(
        SHAPE_MODEL_FILE,
        data="reference masks of the 669 cases of kaggle-lungs-512 (Shenzhen, Montgomery; CC BY-NC-SA 4.0)",
        thresholds="benchmarks/frontal_chest_check.py --fit: review at the 98th percentile, skip at twice the largest "
        "distance of the release model's masks of the chests, each scored by a model fitted without its fold; "
        "lungs too little below half the smallest share a chest got",
    )
    print(
        f"{SHAPE_MODEL_FILE}: review above {review:.2f}, skip above {skip:.2f} or below "
        f"{model.skip_below_fraction:.3f} of the grid"
    )


def write_challenge(folder: Path) -> dict[str, tuple[str, np.ndarray]]:
    """The challenge's PNGs; returns, for each file name, its variant and its reference mask (full size)."""
    from degraded import degrade

    from scripts.data.datalist import prepare_datalist

    folder.mkdir(parents=True, exist_ok=True)
    references = {}
    rng = np.random.default_rng(0)
    for case in prepare_datalist(str(KAGGLE), split_file=str(SPLIT))["validation"]:
        image = np.asarray(Image.open(case["image"]).convert("L"))
        mask = np.asarray(Image.open(case["label"]).convert("L")) > 127
        stem = Path(case["image"]).stem
        made = [(v, (255 - image, mask) if turn is None else (turn(image), turn(mask))) for v, turn in VARIANTS.items()]
        for kind in KEPT_DEGRADATIONS:  # the degradations the quality score is validated on (benchmarks/degraded.py)
            pixels, truth = degrade(image, mask.astype(np.uint8) * 255, kind, rng)
            made.append((f"degraded: {kind}", (pixels, truth > 127)))
        for index, (variant, (pixels, truth)) in enumerate(made):
            name = f"{stem}_v{index}.png"
            Image.fromarray(np.ascontiguousarray(pixels)).save(folder / name)
            references[name] = (variant, np.ascontiguousarray(truth))
    return references


def write_without_header(dicom: Path, png: Path) -> None:
    """A DICOM radiograph as an 8-bit PNG of what a viewer shows (the bundle's reader), or nothing if it fails."""
    from scripts.io.reader import RadiographReader

    reader = RadiographReader(modalities=("CR", "DX", "DR", "RG", "OT", "MG", "XA", "RF", ""), frontal_chest_only=False)
    try:
        grey, _ = reader.get_data(reader.read(str(dicom)))
    except Exception:  # a file the bundle cannot read: its DICOM row says why
        return
    grey = (grey - grey.min()) / max(float(grey.max() - grey.min()), 1e-6)
    Image.fromarray((grey.T * 255).round().astype(np.uint8)).save(png)


def run_inference(inputs: Path, output: Path, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--dataset_dir", str(inputs), "--output_dir", str(output), *extra],
        cwd=BUNDLE, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - start


def challenge(real: Path | None, repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="chest-check-") as tmp:
        work = Path(tmp)
        references = write_challenge(work / "challenge")
        if real is not None:
            images = (  # the radiographs in its sub-folders, one a category (hand, knee, lateral_chest, ...)
                p
                for p in real.glob("[!_]*/**/*")
                if p.is_file() and p.suffix.lower() in (".dcm", ".jpg", ".jpeg", ".png")
            )
            for path in sorted(images):
                target = work / "challenge" / f"real_{path.parent.name}_{path.name}"
                target.write_bytes(path.read_bytes())
                if path.suffix.lower() == ".dcm":  # the same image with no header to go by: the lungs alone decide
                    write_without_header(path, work / "challenge" / f"real_{path.parent.name}-noheader_{path.stem}.png")
        seconds = run_inference(work / "challenge", work / "out")
        rows = json.loads((work / "out" / "report.json").read_text())["rows"]
        table: dict[str, dict] = {}
        missed = []
        for row in rows:
            name = Path(row["input"]).name
            variant = references[name][0] if name in references else f"real: {name.split('_')[1]}"
            entry = table.setdefault(variant, {"n": 0, "skipped": 0, "flagged": 0, "low": 0, "low_caught": 0})
            entry["n"] += 1
            skipped = row["status"] == "skipped"
            flagged = row["status"] == "ok" and bool(row.get("quality_flags"))
            entry["skipped"] += skipped
            entry["flagged"] += flagged
            if name in references and row["status"] == "ok":
                mask = np.asarray(Image.open(work / "out" / row["mask_png"])) > 0
                truth = references[name][1]
                score = 2 * (mask & truth).sum() / max(mask.sum() + truth.sum(), 1)
                if score < 0.5:
                    entry["low"] += 1
                    entry["low_caught"] += flagged
                    if not flagged:
                        missed.append((name, variant, round(float(score), 3)))
        print(f"machine: {machine()}")
        print("| input | n | skipped | ok, flagged | ok, not flagged | masks with Dice < 0.5 kept ok: flagged |")
        print("| --- | --- | --- | --- | --- | --- |")
        for variant, e in table.items():
            print(
                f"| {variant} | {e['n']} | {e['skipped']} | {e['flagged']} | {e['n'] - e['skipped'] - e['flagged']} "
                f"| {e['low_caught']} of {e['low']} |"
            )
        print("masks with Dice < 0.5 neither flagged nor skipped:", missed or "none")
        print(f"challenge run: {seconds:.1f} s for {len(rows)} inputs")
        # the false skips: every shared chest, at 512x512 and at its original size
        for name, folder in (("kaggle-lungs-512", KAGGLE / "images"), ("cxr-real-sample", REAL_SAMPLE / "images")):
            if not folder.is_dir():
                continue
            run_inference(folder, work / f"chests_{name}", "--write_overlay", "false")
            chests = json.loads((work / f"chests_{name}" / "report.json").read_text())["rows"]
            skipped = [Path(r["input"]).name for r in chests if r["status"] != "ok"]
            flagged = sum("lung_shape" in (r.get("quality_flags") or []) for r in chests)
            print(
                f"{name}: {len(chests)} chests, {len(skipped)} skipped {skipped or ''}, {flagged} flagged for their "
                f"lung shape ({flagged / len(chests):.1%})"
            )
        # the cost: the 67 upright radiographs with the check on and off, alternately
        upright = work / "upright"
        upright.mkdir()
        for name, (variant, _) in references.items():
            if variant == "upright":
                (upright / name).write_bytes((work / "challenge" / name).read_bytes())
        times = {"on": [], "off": []}
        for repeat in range(repeats):
            for state in ("off", "on"):
                extra = () if state == "on" else ("--inputs#frontal_chest_only", "false")
                times[state].append(run_inference(upright, work / f"cost_{state}_{repeat}", *extra))
        on, off = min(times["on"]), min(times["off"])
        print(f"cost on 67 radiographs: {on:.2f} s with the check, {off:.2f} s without: ratio {on / off:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", action="store_true", help="fit the shape model and its thresholds, and write it")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "lung_shape_masks.npz",
        help="the release model's masks, kept for the next --fit (made again when the weights change)",
    )
    parser.add_argument("--real", type=Path, default=None, help="a folder of real non-chest radiographs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each setting for the cost")
    args = parser.parse_args()
    os.chdir(BUNDLE)
    if args.fit:
        fit(args.cache)
    else:
        challenge(args.real, args.repeats)


if __name__ == "__main__":
    main()

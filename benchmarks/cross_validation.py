"""k-fold cross-validation of the bundle's own training recipe on real radiographs.

Each fold trains with `monai.bundle run training --config_file configs/train.json` on all of the other folds' cases
and keeps the last epoch's model (as k-fold cross-validation does; `--val_fraction` holds a part out for model
selection instead, as `train.json` does by default), then evaluates its held-out cases on their original image grids
with `configs/evaluate.json` at the input size and with the padding crop the models were trained with: the inference
path users run, post-processing included. Prints per-fold and overall mean, median and worst Dice, 95% Hausdorff
distance, and the time it took.

    python benchmarks/cross_validation.py                                # default recipe, 5 folds, real sample
    python benchmarks/cross_validation.py --folds 5 -- --max_epochs 60    # extra train.json overrides after `--`
    python benchmarks/cross_validation.py --recipe tutorial               # the original tutorial's settings
    python benchmarks/cross_validation.py --only_folds 0 4 -- --train#opacity_prob 0  # quick screen on two folds
    python benchmarks/cross_validation.py --val_fraction 0.15             # hold 15% out, keep the best epoch's model
    python benchmarks/cross_validation.py --workdir W --reuse_models --eval_args "--mask#min_component_fraction 0"
                                          # post-processing ablation: evaluate the fold models kept in W again
    python benchmarks/cross_validation.py --workdir W --reuse_models --qc
                                          # how well qc_score predicts each held-out mask's Dice

``--qc`` also scores degraded copies of each fold's held-out cases (``benchmarks/degraded.py``: noise, blur,
rotation, inverted grey, half the chest, heavy gamma) and reports, for the held-out cases, the degraded copies and both
together, the Spearman correlation between ``qc_score`` and the true Dice, the mean absolute error of ``qc_score`` as a
Dice estimate, and the AUROC of a low ``qc_score`` for finding the masks with Dice below 0.93.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import BUNDLE, REAL_SAMPLE, machine
from degraded import degraded_cases


def folds_of(cases: list, k: int, seed: int) -> list[list]:
    order = np.random.default_rng(seed).permutation(len(cases))
    return [[cases[i] for i in order[f::k]] for f in range(k)]


def run_bundle(args: list[str], log_path: str) -> None:
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "monai.bundle", *args],
            cwd=BUNDLE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    if proc.returncode != 0:
        raise SystemExit(f"monai.bundle {' '.join(args[:4])} failed ({proc.returncode}); see {log_path}")


# train.json settings that shape the network's input, which the evaluation must apply the same way (the input size
# comes with the fold model's model.json; the padding crop is an option of inference.json as well)
SHARED_WITH_EVALUATION = ("crop_padding",)


def training_input_settings(train_configs: list[str], overrides: list[str]) -> list[str]:
    """evaluate.json overrides that give it the input size and padding crop the fold models are trained with."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([os.path.join(BUNDLE, f) for f in train_configs])
    settings = {key: parser[key] for key in SHARED_WITH_EVALUATION}
    for flag, value in zip(overrides, overrides[1:], strict=False):
        if flag.lstrip("-") in SHARED_WITH_EVALUATION:
            settings[flag.lstrip("-")] = json.loads(value)
    return [arg for key, value in settings.items() for arg in (f"--{key}", json.dumps(value))]


def read_metric(output_dir: str, name: str) -> dict[str, float]:
    """Per-case values from MetricsSaver's `<name>_raw.csv` (`filename,class0,...,mean`): the `mean` column."""
    with open(os.path.join(output_dir, f"{name}_raw.csv")) as f:
        return {os.path.basename(row["filename"]): float(row["mean"]) for row in csv.DictReader(f)}


def evaluate(datalist: str, model: str, output_dir: str, overrides: list[str]) -> str:
    """Score a datalist's ``test`` cases with ``inference.json`` + ``evaluate.json``; returns the output folder."""
    run_bundle(
        ["run", "--config_file", "['configs/inference.json','configs/evaluate.json']", "--dataset_dir", datalist,
         "--split#part", "test", "--ckpt_path", model, "--output_dir", output_dir, *overrides],
        f"{output_dir}.log",
    )  # fmt: skip
    return output_dir


LOW_DICE = 0.93


def paired(eval_dir: str) -> list[tuple[float, float]]:
    """``(qc_score, Dice)`` of every case of an evaluation."""
    dice, score = read_metric(eval_dir, "dice"), read_metric(eval_dir, "qc_score")
    return [(score[name], dice[name]) for name in dice]


def qc_validation(pairs: list[tuple[float, float]]) -> str:
    """Spearman correlation, mean absolute error and the AUROC for Dice < :data:`LOW_DICE`, as one line."""
    from scipy.stats import mannwhitneyu, spearmanr

    score, truth = np.array(pairs).T
    low = truth < LOW_DICE
    # AUROC of "the lower the score, the worse the mask": P(score of a good mask > score of a bad one)
    auroc = (
        mannwhitneyu(score[~low], score[low]).statistic / (low.sum() * (~low).sum())
        if 0 < low.sum() < len(low)
        else np.nan
    )
    return (
        f"{len(pairs)} masks ({low.sum()} with Dice < {LOW_DICE}): Spearman {spearmanr(score, truth).statistic:.3f}, "
        f"mean absolute error {np.abs(score - truth).mean():.3f}, AUROC {auroc:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REAL_SAMPLE), help="folder with images/ + masks/ (or Kaggle layout)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--recipe",
        choices=["default", "tutorial"],
        default="default",
        help="'tutorial' adds configs/recipe_tutorial.json (the original FCN_v2 settings)",
    )
    parser.add_argument(
        "--only_folds", type=int, nargs="+", default=None, help="run only these folds (a quick screen of a change)"
    )
    parser.add_argument("--workdir", default=None, help="keep fold models and logs here (default: a temp folder)")
    parser.add_argument(
        "--reuse_models", action="store_true", help="skip training where the fold's folder has its model_trained.pt"
    )
    parser.add_argument(
        "--val_fraction",
        type=float,
        default=0.0,
        help="part of each fold's training cases held out for model selection (0: train on all, keep the last epoch)",
    )
    parser.add_argument("--eval_args", default="", help="evaluate.json overrides, e.g. '--mask#keep_components 3'")
    parser.add_argument("--eval_dir", default="eval", help="name of each fold's evaluation folder")
    parser.add_argument("--qc", action="store_true", help="also validate qc_score on held-out and degraded cases")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="train.json overrides, after `--`")
    args = parser.parse_args()
    overrides = [o for o in args.overrides if o != "--"]

    sys.path.insert(0, str(BUNDLE))
    from scripts.data.datalist import find_pairs
    from scripts.data.sampling import image_source

    cases = find_pairs(args.data)["pairs"]
    workdir = args.workdir or tempfile.mkdtemp(prefix="cxr-cv-")
    train_configs = ["configs/train.json"] + (["configs/recipe_tutorial.json"] if args.recipe == "tutorial" else [])
    train_config = json.dumps(train_configs)  # monai.bundle reads a JSON list of files as one merged config
    inference_overrides = training_input_settings(train_configs, overrides)
    print(
        f"machine: {machine()}\n{len(cases)} cases, {args.folds} folds, recipe {args.recipe}, overrides {overrides}, "
        f"evaluation overrides {args.eval_args.split()}"
    )
    start = time.perf_counter()
    dice, hd95 = {}, {}
    qc: dict[str, list[tuple[float, float]]] = {"held-out": [], "degraded": []}
    for fold, held_out in enumerate(folds_of(cases, args.folds, args.seed)):
        if args.only_folds is not None and fold not in args.only_folds:
            continue
        fold_dir = os.path.join(workdir, f"fold{fold}")
        os.makedirs(fold_dir, exist_ok=True)
        train = [c for c in cases if c not in held_out]
        datalist = os.path.join(fold_dir, "datalist.json")
        with open(datalist, "w") as f:
            json.dump({"training": train, "test": held_out}, f, indent=2)
        t0 = time.perf_counter()
        if not (args.reuse_models and os.path.isfile(f"{fold_dir}/models/model_trained.pt")):
            train_args = ["run", "training", "--config_file", train_config, "--dataset_dir", datalist,
                          "--ckpt_dir", f"{fold_dir}/models", "--output_dir", f"{fold_dir}/train",
                          "--split#val_fraction", str(args.val_fraction), *overrides]  # fmt: skip
            run_bundle(train_args, f"{fold_dir}/train.log")
        t1 = time.perf_counter()
        evaluation = [*inference_overrides, *args.eval_args.split()]
        eval_dir = evaluate(datalist, f"{fold_dir}/models/model_trained.pt", f"{fold_dir}/{args.eval_dir}", evaluation)
        fold_dice, fold_hd = read_metric(eval_dir, "dice"), read_metric(eval_dir, "hd95")
        dice.update(fold_dice)
        hd95.update(fold_hd)
        if args.qc:
            qc["held-out"] += paired(eval_dir)
            bad = degraded_cases(held_out, Path(fold_dir) / "degraded", seed=args.seed)
            bad_list = os.path.join(fold_dir, "degraded.json")
            with open(bad_list, "w") as f:
                json.dump({"training": [], "test": bad}, f, indent=2)
            # a Montgomery radiograph (4020 x 4892) rotated with its corners kept is above the default size limit
            bigger = ["--inputs#max_image_pixels", "60000000"]
            weights = f"{fold_dir}/models/model_trained.pt"
            bad_dir = evaluate(bad_list, weights, f"{eval_dir}_degraded", evaluation + bigger)
            qc["degraded"] += paired(bad_dir)
        print(
            f"fold {fold}: {len(held_out)} held out, mean Dice {statistics.mean(fold_dice.values()):.4f}, "
            f"worst {min(fold_dice.values()):.4f}; train {t1 - t0:.0f} s, evaluate {time.perf_counter() - t1:.0f} s",
            flush=True,
        )
    values = list(dice.values())
    worst = min(dice, key=dice.get)
    print(
        f"\ncross-validated over {len(values)} cases: mean Dice {statistics.mean(values):.4f}, median "
        f"{statistics.median(values):.4f}, worst {dice[worst]:.4f} ({worst}); HD95 mean "
        f"{np.nanmean(list(hd95.values())):.1f} px, worst {np.nanmax(list(hd95.values())):.1f} px; "
        f"time {time.perf_counter() - start:.0f} s; work folder {workdir}"
    )
    by_source: dict[str, list[float]] = {}
    for path, value in dice.items():
        by_source.setdefault(image_source(path), []).append(value)
    print(
        "by source: "
        + ", ".join(
            f"{source or '(none)'} {len(v)} cases mean {statistics.mean(v):.4f} worst {min(v):.4f}"
            for source, v in sorted(by_source.items())
        )
    )
    if args.qc:
        print(f"\nqc_score against the true Dice (masks with Dice < {LOW_DICE} are the ones to find):")
        for name, pairs in (*qc.items(), ("combined", qc["held-out"] + qc["degraded"])):
            print(f"  {name:>9}: {qc_validation(pairs)}")


if __name__ == "__main__":
    main()

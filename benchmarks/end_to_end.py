"""Batch inference end to end against the tutorial's notebook loop, on the same folder, in the same run.

Builds a folder of ``--files`` real chest radiographs (the real sample's PNGs resized to a long side of
``--long_side`` pixels, cycled under distinct names) and times, each as the whole command a user runs, in its own
process (start-up included):

* ``notebook``: the tutorial's loop (PIL read, grey, resize to 224x224, the FCN in fp32 eager PyTorch one image at a
  time, argmax, resize back, save a PNG), the baseline;
* ``bundle``: ``python -m monai.bundle run --config_file configs/inference.json`` with every default output (mask PNG,
  overlay, report);
* ``bundle, no overlay``: the same with ``--write_overlay false``;
* ``bundle, RLE archive only``: every mask in one run-length-encoded archive, no PNG and no overlay.

Then, in this process, the share of each stage of the bundle's time: one run of the same workflow with cProfile, data
loading in the main process (``--num_workers 0``, ``--write_processes 0``) so every stage is on one thread, its time
attributed to decode, pre-processing, network, post-processing, each writer, measurements and the report. The limit
below which nothing can go, measured separately on the same files: decode + network (batch 4) + mask PNG encode.

``--dicom N`` adds the DICOM-folder benchmark (N 2000x2500 12-bit DX files, all outputs, SEG included) against its
own notebook loop (pydicom read, same loop).

    python benchmarks/end_to_end.py [--files 240] [--long_side 1024] [--dicom 40] [--ranks 2] [--weights PATH]
        [--baseline_bundle DIR] [--workdir DIR]

``--baseline_bundle DIR`` also times and profiles another checkout's ``bundle/`` (e.g. the version before a change)
on the same folder; ``--ranks N`` adds a sharded run (torchrun, N processes).

Weights: ``--weights model.pt``, else a randomly initialised network (speed does not depend on them; masks of
random weights are noise, which costs post-processing more than real lungs do).
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
from common import BUNDLE, REAL_SAMPLE, machine

NOTEBOOK_LOOP = r"""
import sys, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
sys.path.insert(0, sys.argv[1])
from scripts.network import VGG16FCN

src, out, weights = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
torch.set_grad_enabled(False)
net = VGG16FCN(in_channels=3, out_channels=2, pretrained="none").eval()
net.load_state_dict(torch.load(weights, weights_only=True))
out.mkdir(parents=True, exist_ok=True)
for path in sorted(p for p in src.iterdir() if p.is_file()):
    if path.suffix == ".dcm":
        import pydicom
        pixels = pydicom.dcmread(path).pixel_array.astype(np.float32)
        image = Image.fromarray(((pixels - pixels.min()) / max(np.ptp(pixels), 1) * 255).astype(np.uint8))
    else:
        image = Image.open(path).convert("L")
    width, height = image.size
    x = np.asarray(image.resize((224, 224), Image.BILINEAR), np.float32) / 255.0
    logits = net(torch.from_numpy(x)[None, None].repeat(1, 3, 1, 1))
    mask = (logits.argmax(1)[0].numpy() * 255).astype(np.uint8)
    Image.fromarray(mask).resize((width, height), Image.NEAREST).save(out / (path.stem + "_mask.png"))
"""

# the functions whose cumulative time is each stage's (module path fragment, function name), in pipeline order
STAGES = {
    "decode (read the file)": [("scripts/io/reader.py", "get_data")],
    "pre-processing (scale, crop, resize, review image)": [("scripts/batch/fault_tolerance.py", "_transform")],
    "network": [("scripts/acceleration.py", "forward")],
    "post-processing (probabilities back to the image, components, holes)": [
        ("monai/engines/utils.py", "engine_apply_transform")
    ],
    "measurements (areas, sides, flags)": [("scripts/lungs.py", "measure_lungs")],
    "mask PNG": [("scripts/batch/writers.py", "write_mask_png")],
    "overlay": [("scripts/batch/writers.py", "write_overlay"), ("scripts/batch/writers.py", "write_overlay_png")],
    "DICOM SEG": [("scripts/batch/writers.py", "write_dicom_seg")],
    "report (records, report files, mask archive)": [
        ("scripts/batch/report.py", "record"),
        ("scripts/batch/report.py", "write"),
        ("scripts/batch/report.py", "write_archive"),
    ],
}


def weights(workdir: Path, given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    sys.path.insert(0, str(BUNDLE))
    from scripts.network import VGG16FCN

    torch.manual_seed(0)
    path = workdir / "random.pt"
    torch.save(VGG16FCN(in_channels=1, out_channels=2, pretrained="none").state_dict(), path)
    return path


def real_folder(folder: Path, files: int, long_side: int) -> Path:
    """``files`` PNGs: the real sample's radiographs at ``long_side`` pixels, cycled under distinct names."""
    from PIL import Image

    sources = sorted((REAL_SAMPLE / "images").glob("*.png"))
    if not sources:
        raise SystemExit(f"the real sample is needed: {REAL_SAMPLE}")
    folder.mkdir(parents=True, exist_ok=True)
    resized = []
    for path in sources:
        image = Image.open(path).convert("L")
        scale = long_side / max(image.size)
        resized.append(image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS))
    for index in range(files):
        resized[index % len(resized)].save(folder / f"cxr_{index:05d}.png")
    return folder


def dicom_folder(folder: Path, files: int) -> Path:
    """``files`` 12-bit DX DICOMs of 2000x2500 pixels made from the synthetic phantom."""
    sys.path.insert(0, str(BUNDLE.parent / "tests"))
    import dicom_factory as make
    from PIL import Image

    from scripts.data.synthetic import synthetic_case

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        image = synthetic_case(index)[0]
        big = np.asarray(Image.fromarray(image).resize((2000, 2500), Image.BILINEAR)).astype(np.uint16) * 16
        make.save(make.radiograph(big, bits_stored=12, pixel_spacing=(0.14, 0.14)), folder / f"dx_{index:05d}.dcm")
    return folder


def timed(command: list[str], cwd: Path = BUNDLE, ok: tuple[int, ...] = (0, 3)) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(command[:6])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def notebook(src: Path, out: Path, model: Path) -> float:
    return timed([sys.executable, "-c", NOTEBOOK_LOOP, str(BUNDLE), str(src), str(out), str(model)])


def bundle(src: Path, out: Path, model: Path, *extra: str, bundle_dir: Path = BUNDLE, ranks: int = 1) -> float:
    """Seconds of the user's command (``ranks`` > 1: sharded with torchrun and configs/multi_gpu_inference.json)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    if ranks > 1:
        configs = "['configs/inference.json','configs/multi_gpu_inference.json']"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        command += ["-m", "monai.bundle", "run", "--config_file", configs]
    args = ["--dataset_dir", str(src), "--output_dir", str(out), "--ckpt_path", str(model), *extra]
    return timed(command + args, cwd=bundle_dir, ok=(0, 1, 3) if ranks > 1 else (0, 3))


PROFILED_RUN = r"""
import cProfile, json, pstats, sys, time
bundle, src, out, model, stages = sys.argv[1:6]
sys.path.insert(0, bundle)
from monai.bundle import run

profile = cProfile.Profile()
start = time.perf_counter()
profile.enable()
try:
    run(config_file=bundle + "/configs/inference.json", meta_file=bundle + "/configs/metadata.json", logging_file=False,
        bundle_root=bundle, dataset_dir=src, output_dir=out, ckpt_path=model, num_workers=0, write_processes=0,
        write_threads=0)
except SystemExit:
    pass
profile.disable()
total = time.perf_counter() - start
stats = pstats.Stats(profile).stats
shares = {}
for stage, functions in json.loads(stages).items():
    shares[stage] = sum(
        cumulative
        for (path, _, name), (_, _, _, cumulative, _) in stats.items()
        if any(path.endswith(f) and name == n for f, n in functions)
    )
print(json.dumps({**shares, "total": total}))
"""


def stage_shares(src: Path, out: Path, model: Path, bundle_dir: Path = BUNDLE) -> dict[str, float]:
    """Seconds per stage of one run of the bundle in ``bundle_dir`` (in a process of its own), every stage on one
    thread: data loading in the main process, outputs written in it (cProfile, cumulative time)."""
    proc = subprocess.run(
        [sys.executable, "-c", PROFILED_RUN, str(bundle_dir), str(src), str(out), str(model), json.dumps(STAGES)],
        cwd=bundle_dir,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"profiled run failed:\n{proc.stderr[-3000:]}")
    shares = json.loads(proc.stdout.strip().splitlines()[-1])
    # the data loader's item includes the decode
    shares["pre-processing (scale, crop, resize, review image)"] -= shares["decode (read the file)"]
    return shares


def print_shares(title: str, shares: dict[str, float]) -> None:
    total = shares.pop("total")
    print(f"stage shares of one run of {title} on one thread (cProfile, {total:.1f} s in all):")
    for stage, seconds in shares.items():
        print(f"  {stage:70s} {seconds:6.1f} s  {100 * seconds / total:5.1f} %")


def limit(src: Path, model: Path) -> dict[str, float]:
    """Seconds for what no pipeline can avoid: decode every file, run the network on it (batch 4), encode its mask."""
    sys.path.insert(0, str(BUNDLE))
    from scripts.acceleration import FastNetwork
    from scripts.batch.writers import write_mask_png
    from scripts.io.reader import RadiographReader
    from scripts.network import VGG16FCN

    files = sorted(p for p in src.iterdir() if p.is_file())
    reader = RadiographReader()
    start = time.perf_counter()
    images = [reader.get_data(reader.read(str(f)))[0] for f in files]
    decode = time.perf_counter() - start
    net = VGG16FCN(in_channels=1, out_channels=2, pretrained="none").eval()
    net.load_state_dict(torch.load(model, weights_only=True))
    fast = FastNetwork(net, "cpu", "auto", True).eval()
    batch = torch.rand(4, 1, 128, 128)
    with torch.no_grad():
        fast(batch)
        start = time.perf_counter()
        for _ in range(0, len(files), 4):
            fast(batch)
    network = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        masks = [(np.asarray(image).T > np.median(image)).astype(np.uint8) for image in images]
        start = time.perf_counter()
        for index, mask in enumerate(masks):
            write_mask_png(os.path.join(folder, f"{index}.png"), mask)
        encode = time.perf_counter() - start
    return {"decode": decode, "network (batch 4)": network, "mask PNG encode": encode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=240)
    parser.add_argument("--long_side", type=int, default=1024)
    parser.add_argument("--dicom", type=int, default=0, help="also the DICOM-folder benchmark with this many files")
    parser.add_argument("--ranks", type=int, default=0, help="also a sharded run with this many torchrun processes")
    parser.add_argument("--baseline_bundle", default=None, help="also time and profile this (older) bundle folder")
    parser.add_argument("--weights", default=None, help="model.pt to use (default: random weights)")
    parser.add_argument("--workdir", default=None)
    options = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if options.workdir:
        Path(options.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=options.workdir) as folder:
        root = Path(folder)
        model = weights(root, options.weights)
        src = real_folder(root / "png", options.files, options.long_side)
        print(f"machine: {machine()}")
        print(f"folder: {options.files} real radiographs, long side {options.long_side} px (PNG)")
        results = {"notebook loop": notebook(src, root / "out_notebook", model)}
        if options.baseline_bundle:
            baseline_dir = Path(options.baseline_bundle).resolve()
            results["baseline bundle, default"] = bundle(src, root / "out_base", model, bundle_dir=baseline_dir)
        results["bundle, default outputs"] = bundle(src, root / "out_bundle", model)
        results["bundle, no overlay"] = bundle(src, root / "out_no_overlay", model, "--write_overlay", "false")
        results["bundle, RLE archive only"] = bundle(
            src, root / "out_rle", model, "--write_png", "false", "--write_overlay", "false", "--write_rle", "true"
        )
        if options.ranks > 1:
            results[f"bundle, {options.ranks} ranks"] = bundle(src, root / "out_ranks", model, ranks=options.ranks)
        baseline = results["notebook loop"]
        for name, seconds in results.items():
            print(f"  {name:26s} {seconds:7.1f} s  {options.files / seconds:6.1f} files/s  {baseline / seconds:5.2f}x")
        if options.baseline_bundle:
            print_shares("the baseline bundle", stage_shares(src, root / "out_profile_base", model, baseline_dir))
        print_shares("the bundle", stage_shares(src, root / "out_profile", model))
        bound = limit(src, model)
        print(
            f"limit: {sum(bound.values()):.1f} s on one thread ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in bound.items())
            + f"), {sum(bound.values()) / os.cpu_count():.1f} s on {os.cpu_count()} cores"
        )
        if options.dicom:
            dicoms = dicom_folder(root / "dicom", options.dicom)
            dicom_notebook = notebook(dicoms, root / "out_dicom_notebook", model)
            dicom_bundle = bundle(dicoms, root / "out_dicom_bundle", model)
            line = f"DICOM folder, {options.dicom} DX of 2000x2500: notebook loop {dicom_notebook:.1f} s, "
            if options.baseline_bundle:
                dicom_base = bundle(dicoms, root / "out_dicom_base", model, bundle_dir=baseline_dir)
                line += f"baseline bundle {dicom_base:.1f} s ({dicom_notebook / dicom_base:.2f}x), "
            print(
                line + f"bundle (all outputs, SEG included) {dicom_bundle:.1f} s: {dicom_notebook / dicom_bundle:.2f}x"
            )


if __name__ == "__main__":
    main()

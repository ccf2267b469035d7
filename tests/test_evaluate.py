"""evaluate.json as users run it: Dice, IoU, HD95 and ASD per case on the original image grid (MetricsSaver CSVs and
a printed table), equal to what the masks written by inference.json score."""

import csv
import json
import os

import numpy as np
import pytest
from conftest import dice, run_bundle
from PIL import Image

from scripts.data.synthetic import synthetic_case

pytestmark = pytest.mark.slow


EVALUATE = "['configs/inference.json','configs/evaluate.json']"  # evaluate.json overrides inference.json


def run_config(config: str, *args: str) -> str:
    """A workflow as users run it; returns its log."""
    proc = run_bundle("run", "--config_file", config, *args)
    return proc.stdout + proc.stderr


def per_case(path) -> dict[str, float]:
    with open(path) as f:
        return {os.path.basename(r["filename"]): float(r["mean"]) for r in csv.DictReader(f)}


def test_metrics_per_case_on_the_original_grid(model_args, tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for seed in range(4):
        image, mask = synthetic_case(seed)
        Image.fromarray(image).save(data / "images" / f"case{seed}.png")
        if seed == 0:  # a mask stored at twice its image's size (as the Kaggle Shenzhen masks are): resized onto it
            mask = np.asarray(Image.fromarray(mask).resize((mask.shape[1] * 2, mask.shape[0] * 2), Image.NEAREST))
        Image.fromarray(mask).save(data / "masks" / f"case{seed}.png")

    log = run_config(EVALUATE, "--dataset_dir", str(data), "--output_dir", str(tmp_path / "eval"), *model_args)
    scores = {m: per_case(tmp_path / "eval" / f"{m}_raw.csv") for m in ("dice", "iou", "hd95", "asd", "qc_score")}
    assert all(sorted(s) == [f"case{i}.png" for i in range(4)] for s in scores.values())
    assert all(0 <= q <= 1 for q in scores["qc_score"].values()), scores["qc_score"]
    for name, d in scores["dice"].items():
        assert d > 0.9 and scores["iou"][name] == pytest.approx(d / (2 - d), abs=1e-4)
        assert 0 <= scores["asd"][name] <= scores["hd95"][name] < 10  # pixels
    assert "per-case metrics (4 cases)" in log and "case3.png" in log
    mean_line = next(line for line in log.splitlines() if line.startswith("mean "))
    assert float(mean_line.split()[1]) == pytest.approx(np.mean(list(scores["dice"].values())), abs=1e-4)
    with open(tmp_path / "eval" / "metrics.csv") as f:
        assert {row[0] for row in csv.reader(f)} == {"dice", "iou", "hd95", "asd"}
    assert (tmp_path / "eval" / "dice_summary.csv").is_file()

    # the masks batch inference writes score exactly what evaluate.json reports: same pixels, same grid
    run_config(
        "configs/inference.json",
        "--dataset_dir",
        str(data / "images"),
        "--output_dir",
        str(tmp_path / "out"),
        "--write_overlay",
        "false",
        *model_args,
    )
    with open(tmp_path / "out" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        predicted = np.asarray(Image.open(tmp_path / "out" / row["mask_png"])) > 0
        truth = np.asarray(Image.open(data / "masks" / row["input"]))
        if truth.shape != predicted.shape:
            truth = np.asarray(Image.fromarray(truth).resize(predicted.shape[::-1], Image.NEAREST))
        truth = truth > 0
        assert scores["dice"][row["input"]] == pytest.approx(dice(predicted, truth), abs=1e-5), row["input"]
        # and the quality score the report gives is the one the evaluation saves
        assert float(row["qc_score"]) == pytest.approx(scores["qc_score"][row["input"]], abs=1e-4), row["input"]


def test_evaluate_on_real_radiographs_prints_per_case_and_mean_dice(real_trained_model, real_sample, tmp_path):
    """On real radiographs (Shenzhen masks stored at another size than their images, a Montgomery case), with the model
    trained briefly on other real radiographs: lungs are found, and the printed table holds every case and the mean."""
    names = ["CHNCXR_0601_1.png", "CHNCXR_0603_1.png", "MCUCXR_0196_1.png"]  # not among its training cases
    cases = [{"image": str(real_sample / "images" / n), "label": str(real_sample / "masks" / n)} for n in names]
    (tmp_path / "list.json").write_text(json.dumps({"training": cases}))
    log = run_config(
        EVALUATE,
        "--dataset_dir",
        str(tmp_path / "list.json"),
        "--output_dir",
        str(tmp_path / "eval"),
        "--ckpt_path",
        str(real_trained_model["weights"]),
        "--num_workers",
        "0",
    )
    scores = per_case(tmp_path / "eval" / "dice_raw.csv")
    assert sorted(scores) == sorted(names)
    assert all(d > 0.75 for d in scores.values()), scores  # lungs, not an arbitrary region (chance is about 0.4)
    table = log[log.index("per-case metrics (3 cases)") :]
    assert all(name in table for name in names) and "\nmean " in table
    mean_line = next(line for line in table.splitlines() if line.startswith("mean "))
    assert float(mean_line.split()[1]) == pytest.approx(np.mean(list(scores.values())), abs=1e-4)

"""`benchmarks/cross_validation.py` runs real k-fold training and evaluation through `monai.bundle` and reports what
its folds measured: every case held out exactly once, trained on all the other folds' cases, evaluated with the input
size and padding crop the fold models were trained with."""

from __future__ import annotations

import csv
import json
import re
import sys

from conftest import REPO, run


def test_cross_validation_holds_every_case_out_once_and_reports_its_dice(tmp_path):
    from scripts.data.synthetic import generate_synthetic_dataset

    data = generate_synthetic_dataset(str(tmp_path / "data"), num_cases=6, seed=7)
    workdir = tmp_path / "cv"
    proc = run(
        [sys.executable, "benchmarks/cross_validation.py", "--data", data, "--folds", "2", "--workdir", str(workdir),
         "--", "--max_epochs", "1", "--image_size", "[64,64]", "--crop_padding", "false",
         "--num_workers", "0"],  # fmt: skip
        cwd=REPO
    )

    folds = [json.loads((workdir / f"fold{f}" / "datalist.json").read_text()) for f in range(2)]
    held_out = [[c["image"] for c in fold["test"]] for fold in folds]
    assert (
        sorted(held_out[0] + held_out[1]) == sorted({*held_out[0], *held_out[1]})
        and len(held_out[0] + held_out[1]) == 6
    )
    for fold, cases in zip(folds, held_out, strict=True):
        # each fold's datalist offers all of the other folds' cases for training ...
        assert sorted(c["image"] for c in fold["training"]) == sorted(set(held_out[0] + held_out[1]) - set(cases))
    for f in range(2):
        train_log = (workdir / f"fold{f}" / "train.log").read_text()
        # ... and by default train.json holds none of them back for model selection, so it keeps the last epoch's model
        assert "no validation data: saved the epoch 1 model" in train_log
        # evaluated at the size the model was trained with (its model_trained.json, which evaluation reads) and with its
        # padding crop (an override of the evaluation too), on the held-out cases only
        settings = json.loads((workdir / f"fold{f}" / "models" / "model_trained.json").read_text())
        assert settings["image_size"] == [64, 64] and settings["crop_padding"] is False, settings
        eval_log = (workdir / f"fold{f}" / "eval.log").read_text()
        assert re.search(r"crop_padding.{0,5}false", eval_log), eval_log[-2000:]
        with open(workdir / f"fold{f}" / "eval" / "dice_raw.csv") as rows:
            assert sorted(r["filename"].rsplit("/", 1)[-1] for r in csv.DictReader(rows)) == sorted(
                c.rsplit("/", 1)[-1] for c in held_out[f]
            )

    summary = re.search(
        r"cross-validated over (\d+) cases: mean Dice ([\d.]+), median ([\d.]+), worst ([\d.]+)", proc.stdout
    )
    assert summary, proc.stdout[-2000:]
    assert int(summary.group(1)) == 6 and 0 <= float(summary.group(4)) <= float(summary.group(2)) <= 1
    assert len(re.findall(r"^fold \d: \d held out, mean Dice", proc.stdout, flags=re.M)) == 2

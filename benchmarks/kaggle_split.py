"""Train and score the bundle on the fixed split of ``kaggle-lungs-512`` (the tutorial's own data), and across sources.

Experiments (``--experiment``), each trained with ``monai.bundle run training`` and scored with ``inference.json`` +
``evaluate.json`` on the held-out cases' own grids (the inference path users run, post-processing included):

* ``split``: train on the 602 training cases of ``bundle/configs/datalist_kaggle_lungs_512.json``, score its 67
  validation cases (54 Shenzhen, 13 Montgomery). The model is the last epoch's (no model selection on the cases scored).
* ``shenzhen_to_montgomery``: train on the split's Shenzhen training cases, score every Montgomery case (another
  hospital, another country, other annotators).
* ``montgomery_to_shenzhen``: train on the split's Montgomery training cases, score the split's Shenzhen validation
  cases.
* ``seen``: train on all 669 cases, validation included, and score the 67 validation cases: how closely the recipe
  fits masks it has trained on, the ceiling of what more radiographs like them could give.

    python benchmarks/kaggle_split.py --write_split                  # (re)write the split file, seeded
    python benchmarks/kaggle_split.py --recipe tutorial               # the tutorial's recipe on the split
    python benchmarks/kaggle_split.py -- --max_epochs 20   # the default recipe; train.json overrides after --
    python benchmarks/kaggle_split.py --experiment shenzhen_to_montgomery -- --train#opacity_prob 0.3
    python benchmarks/kaggle_split.py --experiment seen --score_training   # which masks the recipe cannot fit

``--score_training`` also scores the model on the cases it trained on, per source and per 50 case numbers (the
numbers of the public collections' file names), to find masks drawn unlike the rest.

Prints mean, median, worst and 10th-percentile Dice, the share of cases at or above 0.96, per source, and the times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from common import BUNDLE, REPO, machine
from cross_validation import evaluate, read_metric, run_bundle, training_input_settings

DATA = REPO.parent / "shared" / "data" / "kaggle-lungs-512"
SPLIT_FILE = BUNDLE / "configs" / "datalist_kaggle_lungs_512.json"
EXPERIMENTS = ("split", "shenzhen_to_montgomery", "montgomery_to_shenzhen", "seen")


def write_split(data_dir: str, path: str, val_fraction: float = 0.1, seed: int = 0) -> dict[str, list]:
    """A seeded split stratified by source (each source's share of validation cases is the same), paths relative to
    ``data_dir``, written to ``path`` as a decathlon datalist."""
    from scripts.data.datalist import find_pairs, split_cases
    from scripts.data.sampling import image_source

    pairs = find_pairs(data_dir)["pairs"]
    split: dict[str, list] = {"training": [], "validation": []}
    for source in sorted({image_source(c) for c in pairs}):
        parts = split_cases([c for c in pairs if image_source(c) == source], val_fraction, 0.0, seed)
        for key, cases in split.items():
            cases += [{k: os.path.relpath(v, data_dir) for k, v in c.items()} for c in parts[key]]
    for cases in split.values():
        cases.sort(key=lambda c: c["image"])
    with open(path, "w") as f:
        json.dump(split, f, indent=4)
        f.write("\n")
    return split


def experiment_cases(name: str, data_dir: str) -> tuple[list, list]:
    """``(training, scored)`` cases of an experiment, absolute paths."""
    from scripts.data.datalist import prepare_datalist
    from scripts.data.sampling import image_source

    lists = prepare_datalist(data_dir, split_file=str(SPLIT_FILE))
    everything = lists["training"] + lists["validation"]
    if name == "split":
        return lists["training"], lists["validation"]
    if name == "seen":
        return everything, lists["validation"]
    if name == "shenzhen_to_montgomery":
        train = [c for c in lists["training"] if image_source(c) == "CHNCXR"]
        return train, [c for c in everything if image_source(c) == "MCUCXR"]
    train = [c for c in lists["training"] if image_source(c) == "MCUCXR"]
    return train, [c for c in lists["validation"] if image_source(c) == "CHNCXR"]


def case_number(name: str) -> int:
    """The number in a public collection's file name: ``CHNCXR_0043_0.png`` -> 43."""
    return int(name.split("_")[1])


def fit_by_case_number(dice: dict[str, float], source: str, group: int = 50) -> str:
    """One line per ``group`` case numbers of a source: how many cases, their mean Dice and how many are below 0.93,
    which shows masks drawn to another convention where they cluster (annotation batches follow case numbers)."""
    from scripts.data.sampling import image_source

    numbers = {name: case_number(name) for name in dice if image_source(name) == source}
    lines = []
    for first in range(0, max(numbers.values()) + 1, group):
        values = [dice[name] for name, n in numbers.items() if first <= n < first + group]
        if values:
            low = sum(v < 0.93 for v in values)
            lines.append(
                f"  {first}-{first + group - 1}: {len(values)} cases, mean {np.mean(values):.3f}, below 0.93: {low}"
            )
    return "\n".join(lines)


def summary(values: list[float]) -> str:
    v = np.array(values)
    return (
        f"{len(v)} cases: mean {v.mean():.4f}, median {np.median(v):.4f}, worst {v.min():.4f}, "
        f"10th percentile {np.percentile(v, 10):.4f}, >= 0.96: {(v >= 0.96).mean():.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA), help="the kaggle-lungs-512 folder (images/ + masks/)")
    parser.add_argument("--experiment", choices=EXPERIMENTS, default="split")
    parser.add_argument("--recipe", choices=["default", "tutorial"], default="default")
    parser.add_argument("--workdir", default=None, help="keep the model, logs and evaluation here")
    parser.add_argument("--write_split", action="store_true", help=f"write {SPLIT_FILE.name} (seeded) and stop")
    parser.add_argument(
        "--score_training", action="store_true", help="also score the training cases, per source and case number"
    )
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="train.json overrides, after `--`")
    args = parser.parse_args()
    overrides = [o for o in args.overrides if o != "--"]
    sys.path.insert(0, str(BUNDLE))
    from scripts.data.sampling import image_source

    if args.write_split:
        split = write_split(args.data, str(SPLIT_FILE))
        print(f"{SPLIT_FILE}: " + ", ".join(f"{len(v)} {k}" for k, v in split.items()))
        return
    train, scored = experiment_cases(args.experiment, args.data)
    workdir = args.workdir or tempfile.mkdtemp(prefix=f"cxr-{args.experiment}-")
    os.makedirs(workdir, exist_ok=True)
    datalist = os.path.join(workdir, "datalist.json")
    with open(datalist, "w") as f:
        json.dump({"training": train, "test": scored}, f, indent=2)
    train_configs = ["configs/train.json"] + (["configs/recipe_tutorial.json"] if args.recipe == "tutorial" else [])
    print(
        f"machine: {machine()}\nexperiment {args.experiment}: {len(train)} training, {len(scored)} scored cases; "
        f"recipe {args.recipe}, overrides {overrides}; work folder {workdir}",
        flush=True,
    )
    start = time.perf_counter()
    model = os.path.join(workdir, "models", "model_trained.pt")
    if not os.path.isfile(model):
        run_bundle(
            ["run", "training", "--config_file", json.dumps(train_configs), "--dataset_dir", datalist,
             "--ckpt_dir", os.path.dirname(model), "--output_dir", f"{workdir}/train", "--split#val_fraction", "0",
             *overrides],
            f"{workdir}/train.log",
        )  # fmt: skip
    trained = time.perf_counter()
    eval_dir = evaluate(datalist, model, f"{workdir}/eval", training_input_settings(train_configs, overrides))
    dice = read_metric(eval_dir, "dice")
    print(f"train {trained - start:.0f} s, evaluate {time.perf_counter() - trained:.0f} s")
    print(f"all: {summary(list(dice.values()))}")
    for source in sorted({image_source(name) for name in dice}):
        print(f"{source}: {summary([v for k, v in dice.items() if image_source(k) == source])}")
    worst = sorted(dice, key=dice.get)[:5]
    print("worst cases: " + ", ".join(f"{k} {dice[k]:.4f}" for k in worst))
    if args.score_training:
        trained_on = os.path.join(workdir, "datalist_training.json")
        with open(trained_on, "w") as f:
            # cases already scored above (every one in `seen`) are not run through the network again
            json.dump({"training": [], "test": [c for c in train if c not in scored]}, f, indent=2)
        fit = read_metric(
            evaluate(trained_on, model, f"{workdir}/eval_training", training_input_settings(train_configs, overrides)),
            "dice",
        )
        fit.update(dice)
        for source in sorted({image_source(name) for name in fit}):
            values = [v for name, v in fit.items() if image_source(name) == source]
            print(f"{source}, every case trained on or scored: {summary(values)}")
            print(fit_by_case_number(fit, source))
    print(f"mean Dice {statistics.mean(dice.values()):.4f}")


if __name__ == "__main__":
    main()

"""Every on/off option of every config reads as users type it: ``true/false/yes/no/on/off/1/0`` in any case, from the
command line (where ``monai.bundle`` passes ``--write_seg false`` as the string ``"false"``) and from JSON, through the
one reader ``scripts.settings.is_on``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import fire
import nibabel
import numpy as np
import pytest
import torch
from conftest import BUNDLE, run_bundle
from monai.bundle import ConfigParser
from PIL import Image

from scripts.data.synthetic import synthetic_case
from scripts.settings import OFF_WORDS, ON_WORDS, is_on
from scripts.transforms.image import above_minimum

CONFIG_SETS = {
    "inference": ["inference.json"],
    "exported": ["inference.json", "inference_exported.json"],
    "evaluate": ["inference.json", "evaluate.json"],
    "multi_gpu_evaluate": ["inference.json", "evaluate.json", "multi_gpu_evaluate.json"],
    "train": ["train.json"],
    "multi_gpu_train": ["train.json", "multi_gpu_train.json"],
    "tutorial": ["train.json", "recipe_tutorial.json"],
}


# the exported TorchScript network runs as it was exported: its config ignores channels_last
UNUSED = {("exported", "channels_last")}


def merged(names: list[str]) -> ConfigParser:
    """The configs as ``monai.bundle run`` reads them: with the metadata as ``_meta_``."""
    parser = ConfigParser()
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser.read_config([str(BUNDLE / "configs" / n) for n in names])
    return parser


def all_switches() -> set[str]:
    """The on/off options of the bundle: top-level keys with a true/false default in any config, and ``amp`` (on
    where CUDA is). A switch may be a model setting elsewhere (``crop_padding``: inference reads the model's own)."""
    found = {"amp"}
    for path in (BUNDLE / "configs").glob("*.json"):
        found |= {k for k, v in json.loads(path.read_text()).items() if isinstance(v, bool)}
    return found


def switches(parser: ConfigParser) -> list[str]:
    """The on/off options this config set has."""
    return sorted(all_switches() & set(parser.get()))


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


@pytest.mark.parametrize("name", sorted(CONFIG_SETS))
def test_every_switch_of_every_config_goes_through_the_one_reader(name):
    """A switch reaches Python whole (``"write_seg": "@write_seg"``), where the component reads it with ``is_on``
    (the effect tests below check each); never in an expression, where Python would take the word "false" as true."""
    parser = merged(CONFIG_SETS[name])
    found = switches(parser)
    assert "amp" in found and "channels_last" in found  # the check below is not vacuous
    for key in found:
        uses = [s for s in strings(parser.get()) if re.search(rf"@{key}(?![\w#])", s)]
        assert uses or (name, key) in UNUSED, f"{name}: switch {key} is never used"
        for text in uses:
            assert text == f"@{key}", f"{name}: {key} read in an expression: {text!r}"


def test_no_config_reads_a_switch_in_an_expression():
    """Every on/off switch is read in Python (:class:`scripts.batch.batch_run.BatchRun` and the components that take
    one), none in a config expression."""
    for path in (BUNDLE / "configs").glob("*.json"):
        assert "is_on(" not in path.read_text(), path.name


def test_is_on_reads_every_word_in_any_case_and_refuses_the_rest():
    for word in ON_WORDS:
        assert all(is_on(w) for w in (word, word.upper(), word.title(), f" {word} "))
    for word in OFF_WORDS:
        assert not any(is_on(w) for w in (word, word.upper(), word.title(), f" {word} "))
    assert is_on(True) and is_on(1) and not is_on(False) and not is_on(0)
    for typo in ("flase", "", "2", None, "enabled"):
        with pytest.raises(ValueError, match="is not an on/off value"):
            is_on(typo)


def test_the_command_line_passes_lowercase_words_as_strings():
    """Why the reader exists: ``monai.bundle`` parses its arguments with ``fire``, which turns ``False`` into a bool
    but leaves ``false`` a string (truthy in Python) and ``0`` an int."""
    parsed = fire.Fire(lambda **kw: kw, command=["--a", "false", "--b", "False", "--c", "0", "--d", "off"])
    assert parsed == {"a": "false", "b": False, "c": 0, "d": "off"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("switch_inputs")
    Image.fromarray(synthetic_case(3)[0]).save(folder / "a.png")
    return folder


def flat(compose) -> list:
    """The transforms of a ``Compose``, nested ``Compose`` objects opened."""
    return [y for x in compose.transforms for y in (flat(x) if hasattr(x, "transforms") else [x])]


def by_name(parser, target: str) -> str:
    """``target`` with each ``<Name>`` replaced by the position of the transform of that class in the list before it
    (``preprocessing#transforms#<CropForegroundd>#select_fn``): a test names the transform, not where it stands."""
    parts = []
    for part in target.split("#"):
        if part.startswith("<") and part.endswith(">"):
            items = parser["#".join(parts)]
            part = str(next(i for i, x in enumerate(items) if str(x.get("_target_", "")).endswith(part[1:-1])))
        parts.append(part)
    return "#".join(parts)


def parsed(names: list[str], overrides: dict, target: str):
    parser = merged(names)
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content(by_name(parser, target))


# (option, the id that receives it, how to read the effect): a lowercase word typed on the command line must switch
# the effect
INFERENCE_EFFECTS = [
    ("write_png", "batch", lambda run: run.outputs.write_png),
    ("write_nifti", "batch", lambda run: run.outputs.write_nifti),
    ("write_seg", "batch", lambda run: run.outputs.write_seg),
    ("write_overlay", "batch", lambda run: run.outputs.write_overlay),
    (
        "write_overlay",
        "preprocessing",
        lambda t: any(type(x).__name__ == "ReviewImaged" and x.enabled for x in flat(t)),
    ),
    ("label_sides", "batch", lambda run: run.outputs.label_sides),
    ("label_sides", "writer_postprocessing", lambda t: flat(t)[-1].enabled),
    ("overwrite", "batch", lambda run: run.overwrite),
    ("amp", "evaluator", lambda evaluator: evaluator.amp),
    ("channels_last", "evaluator#network", lambda network: network.channels_last),
    ("crop_padding", "preprocessing#transforms#<CropForegroundd>#select_fn", lambda select: select is above_minimum),
    ("crop_padding", "batch", lambda run: run.settings["crop_padding"]),
]


@pytest.mark.parametrize("config", ["inference", "exported"])
@pytest.mark.parametrize("option,target,effect", INFERENCE_EFFECTS, ids=[f"{o}-{t}" for o, t, _ in INFERENCE_EFFECTS])
def test_inference_switches_follow_the_lowercase_word(config, option, target, effect, inputs, tmp_path):
    if config == "exported" and target == "evaluator#network":
        pytest.skip("the exported network is used as exported: channels_last does not apply")
    base = {"dataset_dir": str(inputs), "ckpt_path": str(tmp_path / "none.pt")}
    if config == "exported":
        scripted = torch.jit.script(torch.nn.Conv2d(1, 2, 1))
        scripted.save(str(tmp_path / "model.ts"))
        base["exported_model"] = str(tmp_path / "model.ts")
    read = effect or bool
    words = (("true", "false"), ("yes", "no"), ("on", "off"), ("1", "0"), ("TRUE", "False"))
    for n, (on, off) in enumerate(words):  # an output folder per run: a batch run holds its folder until it ends
        out = {"output_dir": str(tmp_path / f"out_{n}")}
        assert read(parsed(CONFIG_SETS[config], {**base, **out, option: on}, target)) is True, (option, on)
        out = {"output_dir": str(tmp_path / f"out_{n}_off")}
        assert read(parsed(CONFIG_SETS[config], {**base, **out, option: off}, target)) is False, (option, off)


@pytest.fixture(scope="module")
def training_data(tmp_path_factory) -> str:
    from scripts.data.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(str(tmp_path_factory.mktemp("switch_data")), num_cases=6, seed=1)


TRAINING_EFFECTS = [
    ("train", "amp", "train#trainer#amp", None),
    ("train", "amp", "validate#evaluator#amp", None),
    ("train", "channels_last", "train#trainer#network", lambda network: network.channels_last),
    ("train", "channels_last", "validate#evaluator#network", lambda network: network.channels_last),
    (
        "train",
        "train#trainer#network#compile",
        "train#trainer#network",
        lambda network: network._train_network is not network.network,
    ),
    (
        "train",
        "crop_padding",
        "train#deterministic_transforms#<CropForegroundd>#select_fn",
        lambda select: select is above_minimum,
    ),
    ("train", "resume", "train#resume_training", lambda resume: resume.checkpoint is not None),
    ("evaluate", "amp", "evaluator#amp", None),
    ("evaluate", "channels_last", "evaluator#network", lambda network: network.channels_last),
    (
        "evaluate",
        "crop_padding",
        "preprocessing#transforms#<CropForegroundd>#select_fn",
        lambda select: select is above_minimum,
    ),
]


@pytest.mark.parametrize(
    "config,option,target,effect", TRAINING_EFFECTS, ids=[f"{c}-{o}-{t}" for c, o, t, _ in TRAINING_EFFECTS]
)
def test_training_and_evaluation_switches_follow_the_lowercase_word(
    config, option, target, effect, training_data, tmp_path
):
    (tmp_path / "models").mkdir()
    torch.save({}, tmp_path / "models" / "checkpoint_epoch=1.pt")  # something for --resume to find
    base = {
        "dataset_dir": training_data,
        "output_dir": str(tmp_path / "eval"),
        "ckpt_dir": str(tmp_path / "models"),
        "num_workers": 0,
        **({"cache#dataset_type": "plain"} if config == "train" else {}),
    }
    read = effect or bool
    for on, off in (("true", "false"), ("Yes", "NO"), ("on", "off"), ("1", "0")):
        assert read(parsed(CONFIG_SETS[config], {**base, option: on}, target)) is True, (option, on)
        assert read(parsed(CONFIG_SETS[config], {**base, option: off}, target)) is False, (option, off)


def test_cudnn_benchmark_follows_the_lowercase_word(training_data, tmp_path):
    before = torch.backends.cudnn.benchmark
    try:
        for word, expected in (("true", True), ("off", False), ("YES", True), ("0", False)):
            parser = merged(CONFIG_SETS["train"])
            parser["cudnn_benchmark"] = word
            parser["dataset_dir"] = training_data
            parser["output_dir"] = str(tmp_path / "eval")
            index = next(i for i, x in enumerate(parser["initialize"]) if "cudnn_benchmark" in str(x))
            parser.get_parsed_content(f"initialize#{index}")
            assert torch.backends.cudnn.benchmark is expected, word
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.slow
def test_write_seg_false_writes_no_seg(model_args, tmp_path):
    """The issue's case, as a user types it on the command line: ``--write_seg false`` writes no SEG,
    ``--write_overlay no`` no overlay, ``--write_nifti on`` a NIfTI mask, ``--label_sides TRUE`` two lung labels."""
    import dicom_factory as make

    src = tmp_path / "in"
    make.save(make.radiograph(synthetic_case(5)[0]), src / "a.dcm")
    inference = ["run", "--config_file", "configs/inference.json", "--dataset_dir", str(src), *model_args]
    switches = ["--write_seg", "false", "--write_overlay", "no", "--write_nifti", "on", "--label_sides", "TRUE"]
    run_bundle(*inference, "--output_dir", str(tmp_path / "out"), *switches)
    written = sorted(p.name.split("_", 2)[-1] for p in (tmp_path / "out").glob("a_*"))
    assert written == ["mask.nii.gz", "mask.png"]
    row = json.loads((tmp_path / "out" / "report.json").read_text())["rows"][0]
    assert row["seg_dicom"] is None and row["overlay"] is None and row["mask_nifti"]
    labels = {int(v) for v in np.unique(nibabel.load(tmp_path / "out" / row["mask_nifti"]).get_fdata())}
    assert labels <= {0, 1, 2} and 2 in labels  # sides labelled: right 1, left 2
    # a typo is an error that names the accepted words, not a silent "off"
    typo = run_bundle(*inference, "--output_dir", str(tmp_path / "out2"), "--write_seg", "flase", expect=1)
    assert "'flase' is not an on/off value" in typo.stdout + typo.stderr

"""MONAI bundle checks users and the model zoo run: metadata schema, network in/out shapes, TorchScript export."""

import json

import pytest
from conftest import BUNDLE, SCHEMA, run_bundle


def test_metadata_verifies_against_monai_schema():
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA}")
    proc = run_bundle("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA))
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "config", ["configs/train.json", "configs/inference.json", "['configs/inference.json','configs/evaluate.json']"]
)
def test_network_input_output_shapes_verify(config):
    proc = run_bundle(
        "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file", config
    )
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_the_model_settings_are_written_once():
    """A model run at another size than it was trained at segments worse, silently: the input size, the padding crop
    and the number of classes are written in train.json only (the recipe), and inference and evaluation read them from
    the model (see test_training); the metadata describes the same model."""
    configs = {p.name: json.loads(p.read_text()) for p in (BUNDLE / "configs").glob("*.json")}
    for key in ("image_size", "crop_padding", "num_classes"):
        literal = [name for name, config in configs.items() if not str(config.get(key, "$")).startswith("$")]
        assert literal == ["train.json"] or sorted(literal) == ["recipe_tutorial.json", "train.json"], (key, literal)
    formats = configs["metadata.json"]["network_data_format"]
    for shape in (formats["inputs"]["image"]["spatial_shape"], formats["outputs"]["pred"]["spatial_shape"]):
        assert shape == configs["train.json"]["image_size"]
    assert formats["outputs"]["pred"]["num_channels"] == configs["train.json"]["num_classes"]


def test_the_model_zoo_reference_checks_hold():
    """What the model zoo's CI checks by id: the inference post-processing is ``@postprocessing``, the dataset runs
    ``@preprocessing`` (which ``Invertd`` inverts), and the training and validation engines use their own ids."""
    inference = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    assert inference["evaluator"]["postprocessing"] == "@postprocessing"
    assert inference["dataset"]["transform"] == "@preprocessing"
    invert = [t for t in inference["writer_postprocessing"]["transforms"] if t["_target_"] == "Invertd"]
    assert [t["transform"] for t in invert] == ["@preprocessing"]
    train = json.loads((BUNDLE / "configs" / "train.json").read_text())
    assert train["train"]["trainer"]["postprocessing"] == "@train#postprocessing"
    assert train["validate"]["evaluator"]["postprocessing"] == "@validate#postprocessing"


@pytest.mark.parametrize("workflow_type", ["infer", "train"])
def test_monai_config_workflow_properties_are_complete(workflow_type, tmp_path, model_args):
    """``ConfigWorkflow(...).check_properties()``, as MONAI and the model zoo run it, finds no required property
    missing and no optional one referenced under another id."""
    from monai.bundle import ConfigWorkflow
    from PIL import Image

    from scripts.data.synthetic import synthetic_case

    overrides = {"bundle_root": str(BUNDLE), "output_dir": str(tmp_path / "out")}
    if workflow_type == "infer":
        (tmp_path / "in").mkdir()
        Image.fromarray(synthetic_case(1)[0]).save(tmp_path / "in" / "a.png")
        overrides.update(dataset_dir=str(tmp_path / "in"), ckpt_path=model_args[model_args.index("--ckpt_path") + 1])
        config = "configs/inference.json"
    else:
        overrides.update(
            ckpt_dir=str(tmp_path / "models"), synthetic_dir=str(tmp_path / "synthetic"), dataset_type="plain",
            num_workers=0,
        )  # fmt: skip
        config = "configs/train.json"
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE / config),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []

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
    for key in ("image_size", "crop_padding", "intensity", "num_classes"):
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
            {
                "ckpt_dir": str(tmp_path / "models"),
                "datalist#synthetic_dir": str(tmp_path / "synthetic"),
                "cache#dataset_type": "plain",
                "num_workers": 0,
            }
        )
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


def expressions(value) -> int:
    """The ``$`` expressions in a config value."""
    if isinstance(value, str):
        return int(value.startswith("$"))
    if isinstance(value, dict):
        return sum(expressions(v) for v in value.values())
    if isinstance(value, list):
        return sum(expressions(v) for v in value)
    return 0


def test_the_configs_stay_as_plain_as_the_model_zoo_s():
    """Sizes a model-zoo reviewer reads (spleen_ct_segmentation: 59 ``$`` in all): ``inference.json`` at most 40
    top-level keys and 30 expressions, ``train.json`` at most 36 keys, every config together at most 90 expressions,
    and no ``imports`` (components name their classes in ``_target_``)."""
    configs = {p.name: json.loads(p.read_text()) for p in (BUNDLE / "configs").glob("*.json")}
    counts = {name: expressions(config) for name, config in configs.items()}
    assert len(configs["inference.json"]) <= 40 and counts["inference.json"] <= 30, counts
    assert len(configs["train.json"]) <= 36, len(configs["train.json"])
    assert sum(counts.values()) <= 90, counts
    assert not [name for name, config in configs.items() if "imports" in config or "+imports" in config]


LAYERS = {"io": 0, "data": 1, "transforms": 1, "training": 2, "batch": 2}


def scripts_imports(path) -> set[str]:
    """The ``scripts`` modules a file of the bundle's ``scripts`` package imports, as dotted names."""
    import ast

    package = path.relative_to(BUNDLE).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            found.add(".".join([*base, *([node.module] if node.module else [])]))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("scripts"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("scripts")}
    return found


def test_no_scripts_package_imports_from_a_package_above_or_beside_it():
    """The layering: ``io``, then ``data`` and ``transforms``, then ``training`` and ``batch``. A package imports only
    from its own and lower layers, never from a sibling of its own layer; modules at the top of ``scripts`` (settings,
    process group, acceleration, lungs, quality) import only ``io`` and each other, so every package may use them."""
    checked = 0
    for path in (BUNDLE / "scripts").rglob("*.py"):
        parts = path.relative_to(BUNDLE / "scripts").parts
        own = parts[0] if len(parts) > 1 else None
        for target in scripts_imports(path):
            other = target.split(".")[1] if target.count(".") >= 1 else None
            if other not in LAYERS or other == own:
                continue
            checked += 1
            if own is None:
                assert other == "io", f"{path.name} (top of scripts) imports {target}"
            else:
                assert LAYERS[other] < LAYERS[own], f"scripts/{own}/{path.name} imports {target}, not below it"
    assert checked > 10  # the walk found the imports: not vacuous

"""Shared test fixtures and helpers: the bundle folder on sys.path, the real-data location, the one runner of
commands (:func:`run`, :func:`run_bundle`), a folder of synthetic inputs, the Dice of two masks, and the models the
slow tests share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
REAL_SAMPLE = REPO.parent / "shared" / "data" / "cxr-real-sample"
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"

if str(BUNDLE) not in sys.path:
    sys.path.insert(0, str(BUNDLE))

# Hypothesis profiles for the fuzz suite (tests/test_hostile_inputs.py): "ci", the default, keeps it to a few minutes
# on 2 cores; "long" is for a local run of thousands of examples (pytest --hypothesis-profile long ...). Examples are
# derandomised in CI, so a red run can be repeated exactly.
settings.register_profile("ci", max_examples=200, derandomize=True, print_blob=True)
settings.register_profile("long", max_examples=5000, print_blob=True)
settings.load_profile("ci")


@pytest.fixture
def real_sample() -> Path:
    """The 37 real radiographs with masks beside the repository; tests using it skip when it is absent."""
    if not (REAL_SAMPLE / "images").is_dir():
        pytest.skip(f"real sample not found at {REAL_SAMPLE}")
    return REAL_SAMPLE


def run(
    command: list[str],
    expect: int | None = 0,
    cwd: Path = BUNDLE,
    timeout: int = 900,
    env: dict | None = None,
    max_file_size: int | None = None,
) -> subprocess.CompletedProcess:
    """The tests' one way to run a command as a user would: in ``cwd`` (the bundle folder), output captured, and its
    exit status checked against ``expect`` (``None``: any), failing with the tail of its output.

    Args:
        command: the command line.
        expect: the exit status it must end with.
        cwd: where it runs.
        timeout: seconds before it is killed (the test fails).
        env: variables added to this process's environment.
        max_file_size: a limit on the size of any file it writes (``ulimit -f``, in bytes): writing more fails as a
            full disk does.
    """

    def limit_file_size() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_size, max_file_size))

    proc = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        preexec_fn=limit_file_size if max_file_size else None,
    )
    if expect is not None and proc.returncode != expect:
        raise AssertionError(
            f"{' '.join(command)} exited with {proc.returncode}, not {expect}:\n{proc.stdout[-6000:]}\n"
            f"{proc.stderr[-6000:]}"
        )
    return proc


def run_bundle(*args: str, expect: int | None = 0, **options) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` in the bundle folder, through :func:`run`."""
    return run([sys.executable, "-m", "monai.bundle", *args], expect=expect, **options)


def synthetic_folder(src: Path, files: int, dicom_every: int, dicom_dir: str = "dicom") -> Path:
    """A folder of ``files`` synthetic radiographs as users have them: PNGs (``case00.png``, ...) and, every
    ``dicom_every``-th, a DX DICOM in the sub-folder ``dicom_dir`` (``IM0004.dcm``, ...)."""
    import dicom_factory as make

    from scripts.data.synthetic import synthetic_case

    (src / dicom_dir).mkdir(parents=True, exist_ok=True)
    for seed in range(files):
        image = synthetic_case(seed)[0]
        if seed % dicom_every == dicom_every - 1:
            make.save(make.radiograph(image), src / dicom_dir / f"IM{seed:04d}.dcm")
        else:
            Image.fromarray(image).save(src / f"case{seed:02d}.png")
    return src


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (non-zero is foreground); 1 for two empty masks."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def read_masks(output_dir: Path) -> dict[str, np.ndarray]:
    """Every ``*_mask.png`` an inference run wrote under ``output_dir``, by file name, as boolean arrays."""
    return {p.name: np.asarray(Image.open(p)) > 0 for p in output_dir.rglob("*_mask.png")}


def train_tiny_model(
    workdir: Path, num_cases: int = 24, image_size: int = 96, epochs: int = 12, extra=(), data: str | None = None
) -> dict:
    """Train the real FCN through ``monai.bundle run training`` on ``data`` (default: a small synthetic set); return
    paths and log."""
    from scripts.data.synthetic import generate_synthetic_dataset

    data = data or generate_synthetic_dataset(str(workdir / "data"), num_cases=num_cases, seed=100)
    proc = run_bundle(
        "run",
        "training",
        "--config_file",
        "configs/train.json",
        "--dataset_dir",
        data,
        "--ckpt_dir",
        str(workdir / "models"),
        "--output_dir",
        str(workdir / "eval"),
        "--image_size",
        str(image_size),  # one number, a square, as users type it (test_training checks model.json has both sides)
        "--max_epochs",
        str(epochs),
        "--num_workers",
        "0",
        *extra,
    )
    return {
        "models": workdir / "models",
        "weights": workdir / "models" / "model_trained.pt",  # train.json's model_file: never the shipped model.pt
        "eval": workdir / "eval",
        "data": Path(data),
        "log": proc.stdout + proc.stderr,
    }


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> dict:
    """A real FCN trained for a few epochs on synthetic data (shared by the tests that need sensible masks)."""
    return train_tiny_model(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def real_trained_model(tmp_path_factory) -> dict:
    """The FCN trained briefly on 16 of the real radiographs (96x96): a model whose masks on real images are lungs, for
    tests that compare two paths on real pixels (a synthetic-data model's masks there are arbitrary, even empty)."""
    import json

    if not (REAL_SAMPLE / "images").is_dir():
        pytest.skip(f"real sample not found at {REAL_SAMPLE}")
    workdir = tmp_path_factory.mktemp("real_trained")
    names = sorted(p.name for p in (REAL_SAMPLE / "images").glob("CHNCXR_*.png"))[-16:]
    cases = [{"image": str(REAL_SAMPLE / "images" / n), "label": str(REAL_SAMPLE / "masks" / n)} for n in names]
    datalist = workdir / "datalist.json"
    datalist.write_text(json.dumps({"training": cases[:13], "validation": cases[13:]}))
    return train_tiny_model(workdir, epochs=20, data=str(datalist))


@pytest.fixture(scope="session")
def model_args(trained_model) -> list[str]:
    """Command-line arguments that run batch inference or evaluation with the shared synthetic-data model, quickly:
    its weights (whose ``model.json`` gives the input size it was trained at), no worker processes, small overlays."""
    return [
        "--ckpt_path",
        str(trained_model["weights"]),
        "--num_workers",
        "0",
        "--batch_size",
        "4",
        "--overlay_size",
        "256",
    ]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """A real Orthanc with DICOMweb on a free loopback port (``pacs/stack.py``), stopped after the module's tests; skips
    where Orthanc is not installed (``bash pacs/setup_pacs.sh``)."""
    sys.path.insert(0, str(REPO))
    from pacs.stack import Orthanc, missing

    absent = missing(viewer=False, browser=False)
    if absent:
        pytest.skip("needs " + "; ".join(absent))
    with Orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server

"""The bundle inside a real MONAI Label 0.8.5 ``monaibundle`` app: a server on 127.0.0.1 started with
``monailabel/start_server.sh`` from its own environment (``monailabel/setup_monailabel.sh``), driven over HTTP as a
client would: ``/info``, ``/infer`` on PNG, JPEG and single-frame DICOM studies, label upload, ``/train``, and
``/infer`` again with the new weights.

The app's copy of the bundle is the repository's ``bundle/`` with the weights of the session's tiny trained model
(and their ``model.json``: the model's 96x96 input size travels with them) and the training recipe's ``image_size``
set to 96x96 (the knob a user turns for fast CPU training); nothing else is changed. The tests skip when the MONAI
Label environment is absent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import BUNDLE, REPO, dice, run_bundle
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MONAILABEL_VENV = Path(os.environ.get("MONAILABEL_VENV", REPO / ".venv-monailabel"))
START_SERVER = REPO / "monailabel" / "start_server.sh"
MODEL = "cxr_lung_segmentation"  # the bundle with trained weights
UNTRAINED = "cxr_lung_untrained"  # the same bundle without models/model.pt
SHIPPED = "cxr_lung_shipped"  # the bundle as it is in the repository, with its release weights
IMAGE_SIZE = [96, 96]
STARTUP_TIMEOUT = 300
TRAIN_TIMEOUT = 600

needs_monailabel = pytest.mark.skipif(
    not (MONAILABEL_VENV / ".requirements.sha256").is_file(),
    reason=f"MONAI Label environment not found at {MONAILABEL_VENV}: run monailabel/setup_monailabel.sh",
)


# ---------------------------------------------------------------------------------------------------------------------
# a small HTTP client (the bundle's environment has no `requests`; MONAI Label's own client speaks the same protocol)


def _quoted(text: str) -> str:
    """A multipart header parameter's quoted value."""
    return '"' + text + '"'


class Server:
    """A MONAI Label server process started by ``monailabel/start_server.sh``, and calls to its REST API."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path) -> None:
        self.url, self.process, self.log = url, process, log
        self.models: Path | None = None  # the app's model/ folder, set by the fixture

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 300
    ) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def call(self, method: str, path: str, **kwargs) -> tuple[dict, bytes]:
        status, headers, content = self.request(method, path, **kwargs)
        assert (
            status == 200
        ), f"{method} {path}: HTTP {status}: {content[:2000]!r}\n--- server log ---\n{self.log_tail()}"
        return headers, content

    def json(self, method: str, path: str, payload: dict | None = None) -> dict:
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        return json.loads(self.call(method, path, body=body, headers=headers)[1])

    def multipart(self, method: str, path: str, fields: dict[str, str], files: dict[str, Path]) -> tuple[dict, bytes]:
        boundary = uuid.uuid4().hex
        body = io.BytesIO()
        for name, value in fields.items():
            body.write(
                f"--{boundary}\r\nContent-Disposition: form-data; name={_quoted(name)}\r\n\r\n{value}\r\n".encode()
            )
        for name, file in files.items():
            body.write(
                f"--{boundary}\r\nContent-Disposition: form-data; name={_quoted(name)}; filename={_quoted(file.name)}"
                "\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
            )
            body.write(file.read_bytes() + b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        return self.call(
            method, path, body=body.getvalue(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )

    def infer(self, model: str, image_id: str, out_dir: Path) -> Path:
        """``POST /infer/<model>?image=<id>&output=image`` with no parameters, as a client's default request; saves
        the returned file under its own name in ``out_dir``."""
        query = urllib.parse.urlencode({"image": image_id, "output": "image"})
        headers, content = self.multipart("POST", f"/infer/{model}?{query}", {"params": "{}"}, {})
        disposition = headers.get("content-disposition", headers.get("Content-Disposition", ""))
        name = disposition.split("filename=")[-1].strip('"') if "filename=" in disposition else "result"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{image_id}__{name}"
        path.write_bytes(content)
        return path

    def train(self, model: str, params: dict, timeout: float = TRAIN_TIMEOUT) -> dict:
        """Start ``/train/<model>`` (a background task, as clients do) and wait for it to finish; returns the task."""
        self.json("POST", f"/train/{model}", params)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.json("GET", "/train/")
            if task.get("status") not in ("SUBMITTED", "RUNNING"):
                return task
            time.sleep(2)
        self.request("DELETE", "/train/")
        raise AssertionError(f"training did not finish in {timeout} s\n{self.log_tail()}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(
    workspace: Path, studies: Path | str, log: Path, models: tuple[str, ...] = (MODEL, UNTRAINED, SHIPPED)
) -> Server:
    """``start_server.sh`` on a free loopback port, ``studies`` a folder or a DICOMweb URL; waits for ``/info``."""
    port = _free_port()
    env = {
        **os.environ,
        "MONAILABEL_VENV": str(MONAILABEL_VENV),
        "MONAI_LABEL_SESSION_PATH": str(workspace / "sessions"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PYTHONPATH", None)  # the bundle environment's paths must not leak into MONAI Label's
    cmd = [
        "bash",
        str(START_SERVER),
        "--studies",
        str(studies),
        "--workspace",
        str(workspace),
        "--name",
        MODEL,
        "--copy",
        "--port",
        str(port),
        "--",
        "--conf",
        "models",
        ",".join(models),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"MONAI Label server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if server.request("GET", "/info/", timeout=10)[0] == 200:
                return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    _stop_server(server)
    raise AssertionError(f"MONAI Label server did not answer within {STARTUP_TIMEOUT} s:\n{server.log_tail()}")


def _stop_server(server: Server) -> None:
    """Stop the server and its training subprocesses (its own process group, started by this test)."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=30)


# ---------------------------------------------------------------------------------------------------------------------
# studies: synthetic radiographs as PNG, JPEG and DICOM, with their lung masks kept outside the studies folder


def _synthetic(seed: int) -> tuple[np.ndarray, np.ndarray]:
    from scripts.data.synthetic import synthetic_case

    while True:  # non-square, so that a transposed mask cannot pass for a correct one
        image, mask = synthetic_case(seed)
        if abs(image.shape[0] - image.shape[1]) >= 16:
            return image, mask
        seed += 1000


def _write_dicom(path: Path, image: np.ndarray) -> None:
    """A single-frame 16-bit MONOCHROME2 digital X-ray, as a detector would store it (12 bits used)."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image - For Presentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "DX", "TEST", "Test^Patient"
    ds.PatientOrientation = ["L", "F"]
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [0.2, 0.2]
    ds.PixelData = (image.astype(np.uint16) * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict:
    """The studies folder: ``png`` (PNG), ``jpeg`` (JPEG), ``dicom`` (.dcm) and ``extra`` (PNG for training)."""
    root = tmp_path_factory.mktemp("monailabel")
    folder, truth = root / "studies", root / "truth"
    folder.mkdir()
    truth.mkdir()
    cases = {"png": (301, ".png"), "jpeg": (302, ".jpg"), "dicom": (303, ".dcm"), "extra": (304, ".png")}
    ids = {}
    for kind, (seed, ext) in cases.items():
        image, mask = _synthetic(seed)
        image_id = f"cxr_{kind}"
        if ext == ".dcm":
            _write_dicom(folder / f"{image_id}{ext}", image)
        else:
            Image.fromarray(image).save(folder / f"{image_id}{ext}", **({"quality": 95} if ext == ".jpg" else {}))
        Image.fromarray(mask).save(truth / f"{image_id}.png")
        ids[kind] = image_id
    return {
        "root": root,
        "folder": folder,
        "truth": truth,
        "ids": ids,
        "files": {k: folder / f"{v}{cases[k][1]}" for k, v in ids.items()},
    }


def _bundle_copy(destination: Path, weights: Path | None) -> Path:
    """Copy ``bundle/`` as a user would, with the tiny model's weights and their settings (``model.json``), and the
    recipe (``train.json``, the one place it is written) set to the tiny model's 96x96 for the training MONAI Label
    starts."""
    generated = {"eval", "data", "cache", "outputs", "models"}  # what runs write at the bundle's top level

    def ignored(folder: str, names: list[str]) -> set[str]:
        top = generated if Path(folder) == BUNDLE else set()
        return {n for n in names if n in top or n == "__pycache__"}

    shutil.copytree(BUNDLE, destination, ignore=ignored)
    (destination / "models").mkdir()
    shutil.copy(BUNDLE / "models" / "lung_shape.npz", destination / "models")  # the bundle's own, beside any weights
    if weights is not None:  # in the place and with the settings of shipped release weights
        shutil.copy(weights, destination / "models" / "model.pt")
        settings = json.loads(weights.with_suffix(".json").read_text())
        (destination / "models" / "model.json").write_text(json.dumps({**settings, "release": "test"}))
    path = destination / "configs" / "train.json"
    content = json.loads(path.read_text())
    content["image_size"] = IMAGE_SIZE
    path.write_text(json.dumps(content, indent=4))
    return destination


@pytest.fixture(scope="module")
def server(tmp_path_factory, studies, trained_model):
    workspace = tmp_path_factory.mktemp("monailabel_workspace")
    models = workspace / "monaibundle" / "model"
    _bundle_copy(models / MODEL, trained_model["weights"])
    _bundle_copy(models / UNTRAINED, None)
    # a copy of bundle/ as a user drops it in, shipped weights included (without them, it is one more untrained bundle)
    generated = shutil.ignore_patterns("eval", "data", "cache", "outputs", "checkpoint*", "model_trained*")
    shutil.copytree(BUNDLE, models / SHIPPED, ignore=generated)
    server = _start_server(workspace, studies["folder"], workspace / "server.log")
    server.models = models
    try:
        yield server
    finally:
        _stop_server(server)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, studies, trained_model) -> dict:
    """Masks of the PNG, JPEG and DICOM studies from ``inference.json`` (batch inference, bundle environment) with the
    same weights and image size as the app's copy: what ``/infer`` must return."""
    return _batch_masks(tmp_path_factory.mktemp("reference"), studies, trained_model["weights"])


def _batch_masks(workdir: Path, studies: dict, weights: Path) -> dict[str, np.ndarray]:
    inputs = workdir / "inputs"
    inputs.mkdir(parents=True)
    for kind in ("png", "jpeg", "dicom"):
        shutil.copy(studies["files"][kind], inputs)
    run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(inputs),
        "--output_dir",
        str(workdir / "out"),
        "--ckpt_path",
        str(weights),
        "--image_size",
        json.dumps(IMAGE_SIZE),
        "--write_seg",
        "False",
        "--write_overlay",
        "False",
        "--num_workers",
        "0",
        # MONAI Label runs `network_def` itself, in fp32: compare with the fp32 path, not the bf16 fast path
        "--precision",
        "fp32",
    )
    masks = {}
    for kind in ("png", "jpeg", "dicom"):
        found = sorted((workdir / "out").glob(f"{studies['ids'][kind]}_*_mask.png"))
        assert len(found) == 1, f"inference.json wrote {found} for {kind}"
        masks[kind] = _mask(found[0])
    return masks


def _check_result(path: Path, studies: dict, kind: str) -> np.ndarray:
    """The mask MONAI Label returned: a lossless PNG at the input's rows x columns, 0 = background, 1 = lung."""
    with Image.open(path) as image:
        assert image.format == "PNG", f"{kind}: result is {image.format}, not a lossless PNG"
        mask = np.asarray(image)
    truth = _mask(studies["truth"] / f"{studies['ids'][kind]}.png")
    assert mask.shape == truth.shape, f"{kind}: mask {mask.shape} vs image (rows, columns) {truth.shape}"
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}, np.unique(mask)
    return mask


def _corrected_label(truth: np.ndarray) -> np.ndarray:
    """An annotator's correction: the lung fields drawn 8 pixels wider than the model has learnt them (0/1 labels)."""
    from scipy.ndimage import binary_dilation

    return binary_dilation(truth > 0, iterations=8).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------------


@needs_monailabel
@pytest.mark.slow
def test_info_lists_a_2d_lung_segmentation_model(server):
    info = server.json("GET", "/info/")
    assert MODEL in info["models"], info["models"].keys()
    model = info["models"][MODEL]
    assert model["type"] == "segmentation"
    assert model["dimension"] == 2
    assert model["labels"] == {"lung": 1}
    assert info["labels"] == ["lung"]
    # a bundle without weights has nothing to infer with, but can be trained
    assert UNTRAINED not in info["models"]
    assert {MODEL, UNTRAINED} <= set(info["trainers"])
    # the datastore lists the DICOM study next to PNG and JPEG ones
    assert info["datastore"]["total"] == 4
    assert "sam_2d" not in info["models"]


@needs_monailabel
@pytest.mark.slow
def test_the_shipped_model_is_served_at_first_start(server, studies, tmp_path):
    """A copy of ``bundle/`` as it is in the repository segments at once: MONAI Label lists the shipped model before
    any training, and its mask of a real-looking radiograph lies on the lungs."""
    if not (BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("the bundle ships no weights (bundle/models/model.pt)")
    assert SHIPPED in server.json("GET", "/info/")["models"]
    result = server.infer(SHIPPED, studies["ids"]["png"], tmp_path)
    mask = _check_result(result, studies, "png")
    truth = _mask(studies["truth"] / f"{studies['ids']['png']}.png")
    assert dice(mask, truth) > 0.5, dice(mask, truth)


@needs_monailabel
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom"])
def test_infer_returns_the_inference_json_mask_at_the_input_size(server, studies, reference, kind, tmp_path):
    result = server.infer(MODEL, studies["ids"][kind], tmp_path)
    mask = _check_result(result, studies, kind)
    # the same mask as batch inference gives, pixel for pixel (batch masks are 0/255, MONAI Label's are labels)
    np.testing.assert_array_equal(mask > 0, reference[kind] > 0, err_msg=f"{kind}: MONAI Label vs inference.json")
    # and the lungs where they are: a transposed or flipped mask would not overlap like this
    truth = _mask(studies["truth"] / f"{studies['ids'][kind]}.png")
    assert dice(mask, truth) > 0.8, dice(mask, truth)


@needs_monailabel
@pytest.mark.slow
def test_corrected_labels_retrain_the_model_and_infer_uses_the_new_weights(server, studies, reference, tmp_path):
    weights = server.models / MODEL / "models" / "model.pt"
    before = _sha256(weights)
    labelled = ("png", "dicom", "extra")
    for kind in labelled:
        label = tmp_path / f"{studies['ids'][kind]}.png"
        Image.fromarray(_corrected_label(_mask(studies["truth"] / label.name))).save(label)
        query = urllib.parse.urlencode({"image": studies["ids"][kind], "tag": "final"})
        _, content = server.multipart("PUT", f"/datastore/label?{query}", {"params": "{}"}, {"label": label})
        assert json.loads(content)["label"] == studies["ids"][kind]
    assert server.json("GET", "/info/")["datastore"]["completed"] >= len(labelled)

    # no validation split: the model must still be saved (there is no best validation score to save it by)
    task = server.train(MODEL, {"max_epochs": 2, "val_split": 0.0})
    assert task["status"] == "DONE", f"{task}\n{server.log_tail()}"
    assert _sha256(weights) != before, "training did not write models/model.pt"
    # the shipped weights it replaced are kept, and offered as a model file
    assert _sha256(weights.parent / "model_release.pt") == before
    assert json.loads((weights.parent / "model_release.json").read_text())["release"] == "test"
    assert "release" not in json.loads((weights.parent / "model.json").read_text())
    import torch

    from scripts.network import VGG16FCN

    VGG16FCN().load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))  # plain state dict

    new_reference = _batch_masks(tmp_path / "new", studies, weights)
    changed = False
    for kind in ("png", "dicom"):
        mask = _check_result(server.infer(MODEL, studies["ids"][kind], tmp_path / "after"), studies, kind)
        np.testing.assert_array_equal(mask > 0, new_reference[kind] > 0, err_msg=f"{kind}: not the new weights' mask")
        changed |= not np.array_equal(new_reference[kind] > 0, reference[kind] > 0)
    assert changed, "the new weights give the old masks: this test could not tell old weights from new"


@needs_monailabel
@pytest.mark.slow
def test_a_bundle_without_weights_trains_from_scratch(server, studies, tmp_path):
    weights = server.models / UNTRAINED / "models" / "model.pt"
    assert not weights.exists()
    for kind in ("png", "jpeg", "extra"):
        label = tmp_path / f"{studies['ids'][kind]}.png"
        Image.fromarray((_mask(studies["truth"] / label.name) > 0).astype(np.uint8)).save(label)
        query = urllib.parse.urlencode({"image": studies["ids"][kind], "tag": "final"})
        server.multipart("PUT", f"/datastore/label?{query}", {"params": "{}"}, {"label": label})
    # MONAI Label's default validation split (0.2): the bundle's best-metric saver writes model.pt
    task = server.train(UNTRAINED, {"max_epochs": 1})
    assert task["status"] == "DONE", f"{task}\n{server.log_tail()}"
    assert weights.is_file(), f"no model.pt after training from scratch\n{server.log_tail()}"


@pytest.mark.slow
def test_training_without_validation_data_still_saves_the_model(tmp_path):
    """``train.json`` in the bundle's own environment with an empty validation list, as MONAI Label's ``val_split`` 0
    gives: the model (``model_trained.pt`` from the command line) is written although no validation metric is ever
    computed."""
    from scripts.data.synthetic import generate_synthetic_dataset

    data = Path(generate_synthetic_dataset(str(tmp_path / "data"), num_cases=4, seed=7))
    items = [{"image": str(p), "label": str(data / "masks" / p.name)} for p in sorted((data / "images").glob("*.png"))]
    proc = run_bundle(
        "run",
        "training",
        "--config_file",
        "configs/train.json",
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "eval"),
        "--train#dataset#data",
        json.dumps(items),
        "--validate#dataset#data",
        "[]",
        "--image_size",
        "[64,64]",
        "--max_epochs",
        "2",
        "--num_workers",
        "0",
        "--batch_size",
        "2",
    )
    log = proc.stdout + proc.stderr
    assert "val_mean_dice" not in log  # no validation ran...
    assert (tmp_path / "models" / "model_trained.pt").is_file(), log[-3000:]  # ...and the model was saved all the same


def test_start_server_explains_what_is_missing(tmp_path):
    env = {**os.environ, "MONAILABEL_VENV": str(tmp_path / "no-such-venv")}
    proc = subprocess.run(
        ["bash", str(START_SERVER), "--studies", str(tmp_path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and "run monailabel/setup_monailabel.sh first" in proc.stderr, proc.stderr
    proc = subprocess.run(["bash", str(START_SERVER)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--studies DIR is required" in proc.stderr, proc.stderr

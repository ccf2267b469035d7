"""Multi-process training through a real ``torchrun`` (2 CPU processes, gloo) with configs/multi_gpu_train.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import BUNDLE, run, run_bundle
from PIL import Image

MULTI_GPU_CONFIGS = "['configs/train.json','configs/multi_gpu_train.json']"
IMAGE_SIZE = 64
EPOCHS = 2
NPROC = 2


def run_torchrun(workdir: Path, data: str, *extra: str, epochs: int = EPOCHS, timeout: int = 300) -> str:
    """Launch ``torchrun -m monai.bundle run training`` with the multi-GPU configs, as the bundle card says."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}",
        "-m", "monai.bundle", "run", "training", "--config_file", MULTI_GPU_CONFIGS,
        "--dataset_dir", data,
        "--ckpt_dir", str(workdir / "models"),
        "--output_dir", str(workdir / "eval"),
        "--image_size", f"[{IMAGE_SIZE},{IMAGE_SIZE}]",
        "--max_epochs", str(epochs),
        "--num_workers", "0",
        *extra,
    ]  # fmt: skip
    proc = run(cmd, timeout=timeout, env={"OMP_NUM_THREADS": "1"})
    return proc.stdout + proc.stderr


def validation_dice(model_file: Path, data: str, workdir: Path) -> float:
    """Mean Dice of ``model_file`` over the validation list, in ONE process, through train.json's own evaluator."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "dataset_dir": data,
            "output_dir": str(workdir / "single"),
            "ckpt_dir": str(workdir / "single"),
            "image_size": [IMAGE_SIZE, IMAGE_SIZE],
            "num_workers": 0,
            "validate#handlers": [],
        }
    )
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(model_file, weights_only=True))
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    return float(evaluator.state.metrics["val_mean_dice"])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict:
    """One real 2-process training run; the tests below check what it did."""
    from scripts.data.synthetic import generate_synthetic_dataset

    tmp_path = tmp_path_factory.mktemp("ddp")
    # 20 cases -> 14 training (7 per rank, no padding duplicates), 4 validation (2 per rank), 2 test
    data = generate_synthetic_dataset(str(tmp_path / "data"), num_cases=20, seed=100)
    # the on-disk cache, shared by both ranks as on a multi-GPU node
    extra = [
        "--record_rank_samples",
        "yes",
        "--cache#dataset_type",
        "persistent",
        "--cache#dir",
        str(tmp_path / "cache"),
    ]
    log = run_torchrun(tmp_path, data, *extra)
    return {"dir": tmp_path, "data": data, "log": log}


@pytest.mark.slow
def test_torchrun_two_cpu_processes(ddp_run):
    from scripts.network import VGG16FCN

    tmp_path, data, log = ddp_run["dir"], ddp_run["data"], ddp_run["log"]
    # gloo was chosen without any override, and only rank 0 logged the epochs
    assert "gloo process group" in log
    assert log.count(f"Epoch[{EPOCHS}] Metrics -- val_mean_dice") == 1, log[-4000:]
    assert log.count(f"Saved checkpoint at epoch: {EPOCHS}") == 1

    # both ranks trained every epoch, on disjoint halves of the training list
    training = {item["image"] for item in json.loads((tmp_path / "eval" / "datalist.json").read_text())["training"]}
    assert len(training) == 14
    seen: dict[tuple[int, int], list[str]] = {}
    for rank in range(NPROC):
        for line in (tmp_path / "eval" / "rank_samples" / f"rank{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            assert record["rank"] == rank and record["batch_size"] == len(record["items"]) > 0
            seen.setdefault((record["epoch"], rank), []).extend(record["items"])
    for epoch in range(1, EPOCHS + 1):
        rank0, rank1 = seen[(epoch, 0)], seen[(epoch, 1)]
        assert len(rank0) == len(rank1) == len(training) // NPROC
        assert not set(rank0) & set(rank1), f"epoch {epoch}: ranks shared samples"
        assert set(rank0) | set(rank1) == training
    assert seen[(1, 0)] != seen[(2, 0)], "the DistributedSampler did not reshuffle between epochs"

    # the persistent cache holds each training and validation case once, written by whichever rank loaded it
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 14 + 4

    # exactly one best model and one resume checkpoint, written by rank 0
    assert [p.name for p in tmp_path.rglob("model_trained.pt")] == ["model_trained.pt"]
    assert sorted(p.name for p in (tmp_path / "models").glob("*.pt")) == [
        f"checkpoint_epoch={EPOCHS}.pt",
        "model_trained.pt",
    ]

    # model_trained.pt is a plain state dict that loads into the single-process network
    state = torch.load(tmp_path / "models" / "model_trained.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in state)
    net = VGG16FCN(out_channels=2, in_channels=1).eval()
    net.load_state_dict(state)
    with torch.no_grad():
        assert net(torch.rand(1, 1, 80, 72)).shape == (1, 2, 80, 72)

    # ... and runs the single-process inference workflow on an image
    image = Path(data) / "images" / "SYNTH_0000.png"
    (tmp_path / "one.json").write_text(json.dumps({"testing": [{"image": str(image)}]}))
    run_bundle(
        "run", "--config_file", "configs/inference.json", "--meta_file", "configs/metadata.json",
        "--dataset_dir", str(tmp_path / "one.json"), "--ckpt_path", str(tmp_path / "models" / "model_trained.pt"),
        "--output_dir", str(tmp_path / "inference"), "--image_size", f"[{IMAGE_SIZE},{IMAGE_SIZE}]",
        "--num_workers", "0", "--write_seg", "false", "--write_overlay", "off",
    )  # fmt: skip
    (mask_file,) = (tmp_path / "inference").rglob("SYNTH_0000*_mask.png")
    assert Image.open(mask_file).size == Image.open(image).size

    # the validation Dice the 2 ranks reported (all-gathered): the Dice of the saved model over the WHOLE validation set
    checkpoint = torch.load(tmp_path / "models" / f"checkpoint_epoch={EPOCHS}.pt", weights_only=True)
    best_score, _ = checkpoint["best_model_saver"]["_saved"][0]
    assert validation_dice(tmp_path / "models" / "model_trained.pt", data, tmp_path) == pytest.approx(
        best_score, abs=1e-3
    )


@pytest.mark.slow
def test_multi_gpu_evaluate_matches_single_process(ddp_run, tmp_path):
    model = str(ddp_run["dir"] / "models" / "model_trained.pt")
    args = [
        "--dataset_dir",
        ddp_run["data"],
        "--ckpt_path",
        model,
        "--image_size",
        f"[{IMAGE_SIZE},{IMAGE_SIZE}]",
        "--num_workers",
        "0",
        "--meta_file",
        "configs/metadata.json",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={NPROC}",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/inference.json','configs/evaluate.json','configs/multi_gpu_evaluate.json']",
        "--output_dir",
        str(tmp_path / "ddp"),
        *args,
    ]
    run(cmd, timeout=300, env={"OMP_NUM_THREADS": "1"})
    run_bundle(
        "run",
        "--config_file",
        "['configs/inference.json','configs/evaluate.json']",
        "--output_dir",
        str(tmp_path / "single"),
        *args,
    )

    def read_csv(path: Path) -> list[list[str]]:
        return [line.split(",") for line in path.read_text().splitlines()]

    # every case once (gathered from both ranks), with the same per-case and mean metrics as one process
    ddp_cases, single_cases = read_csv(tmp_path / "ddp" / "dice_raw.csv"), read_csv(
        tmp_path / "single" / "dice_raw.csv"
    )
    assert len(ddp_cases) == len(single_cases) == 21
    ddp_by_file, single_by_file = ({row[0]: float(row[-1]) for row in rows[1:]} for rows in (ddp_cases, single_cases))
    assert ddp_by_file.keys() == single_by_file.keys()
    assert all(ddp_by_file[f] == pytest.approx(single_by_file[f], abs=1e-4) for f in ddp_by_file)
    ddp_metrics, single_metrics = (dict(read_csv(tmp_path / d / "metrics.csv")) for d in ("ddp", "single"))
    assert float(ddp_metrics["dice"]) == pytest.approx(float(single_metrics["dice"]), abs=1e-4)


@pytest.mark.slow
def test_fewer_validation_cases_than_ranks(tmp_path):
    """1 validation case on 2 ranks (a small MONAI Label set): both ranks validate it instead of one having none."""
    from scripts.data.synthetic import generate_synthetic_dataset

    data = generate_synthetic_dataset(str(tmp_path / "data"), num_cases=6, seed=100)  # 4 training, 1 validation
    log = run_torchrun(tmp_path, data, epochs=1)
    assert "4 training, 1 validation" in log and log.count("Epoch[1] Metrics -- val_mean_dice") == 1
    assert (tmp_path / "models" / "model_trained.pt").is_file()


def _broadcast_worker(rank: int, world_size: int, store: str, results: str) -> None:
    """One gloo rank: BatchNorm statistics that differ per rank, then BroadcastBuffers at the evaluator's start."""
    import torch.distributed as dist
    from ignite.engine import Engine

    from scripts.training.distributed import BroadcastBuffers

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        bn = torch.nn.BatchNorm2d(3)
        bn(torch.rand(4, 3, 8, 8) * (rank + 1))  # a training step: running statistics from this rank's batch only
        before = bn.running_mean.clone()
        evaluator = Engine(lambda engine, batch: None)
        BroadcastBuffers(bn).attach(evaluator)
        evaluator.run([0], max_epochs=1)
        torch.save({"before": before, "after": bn.running_mean.clone()}, f"{results}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_broadcast_buffers_gives_every_rank_rank0_statistics(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_broadcast_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert not torch.equal(rank0["before"], rank1["before"])
    assert torch.equal(rank1["after"], rank0["before"]) and torch.equal(rank0["after"], rank0["before"])


def test_launching_without_torchrun_is_a_clear_error(monkeypatch):
    from scripts.process_group import init_distributed

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_distributed()

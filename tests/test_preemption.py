"""Pre-emption: a real training run SIGKILLed mid-epoch resumes with ``--resume True``; checkpoints are atomic."""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BUNDLE
from ignite.engine import Engine, Events

EPOCHS = 3
ITERATIONS = 7  # 14 training cases, batch size 2


def start_training(workdir: Path, data: str, log_file: Path, *extra: str) -> subprocess.Popen:
    """Start ``monai.bundle run training`` in the background, its output going to ``log_file``."""
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
        "--dataset_dir", data,
        "--ckpt_dir", str(workdir / "models"),
        "--output_dir", str(workdir / "eval"),
        "--image_size", "[64,64]",
        "--batch_size", "2",
        "--max_epochs", str(EPOCHS),
        "--num_workers", "0",
        "--train#log_every", "1",  # a log line per iteration, to know when to kill the run
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log_file, "w") as log:
        return subprocess.Popen(cmd, cwd=BUNDLE, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_for(proc: subprocess.Popen, log_file: Path, pattern: str, timeout: float = 120) -> None:
    """Poll the log until ``pattern`` appears; fail if the process ends first or it takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, log_file.read_text()):
            return
        if proc.poll() is not None:
            log = log_file.read_text()[-4000:]
            raise AssertionError(f"training exited ({proc.returncode}) before {pattern!r}:\n{log}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"{pattern!r} not seen in {timeout} s:\n{log_file.read_text()[-4000:]}")


def val_dice(log: str) -> dict[int, float]:
    return {int(e): float(d) for e, d in re.findall(r"Epoch\[(\d+)\] Metrics -- val_mean_dice: ([0-9.]+)", log)}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    from scripts.data.synthetic import generate_synthetic_dataset
    from scripts.network import VGG16FCN

    data = generate_synthetic_dataset(str(tmp_path / "data"), num_cases=20, seed=100)
    models = tmp_path / "models"
    first_log, resumed_log = tmp_path / "first.log", tmp_path / "resumed.log"

    proc = start_training(tmp_path, data, first_log)
    # epoch 1 is checkpointed, epoch 2 has started: kill it in the middle of epoch 2
    wait_for(proc, first_log, rf"Epoch: 2/{EPOCHS}, Iter: 2/{ITERATIONS} ")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    first = first_log.read_text()
    assert not (models / "checkpoint_epoch=2.pt").exists(), "the kill did not land in the middle of epoch 2"
    assert (models / "checkpoint_epoch=1.pt").is_file()
    assert not list(models.glob(".tmp-*")), "a checkpoint write was left behind"

    # what the kill left is complete: the best model and the resume checkpoint both load
    net = VGG16FCN(out_channels=2, in_channels=1)
    net.load_state_dict(torch.load(models / "model_trained.pt", weights_only=True))
    checkpoint = torch.load(models / "checkpoint_epoch=1.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == ITERATIONS  # ignite stores the iteration: 1 epoch
    best_before = checkpoint["best_model_saver"]["_saved"][0][0]
    assert best_before == pytest.approx(val_dice(first)[1], abs=1e-4)

    # restart with the documented override: it continues with epoch 2 and does not redo epoch 1
    proc = start_training(tmp_path, data, resumed_log, "--resume", "true")
    assert proc.wait(timeout=300) == 0, resumed_log.read_text()[-4000:]
    resumed = resumed_log.read_text()
    assert f"Restored all variables from {models / 'checkpoint_epoch=1.pt'}" in resumed
    iterations = re.findall(rf"Epoch: (\d+)/{EPOCHS}, Iter: (\d+)/{ITERATIONS} ", resumed)
    assert iterations[0] == ("2", "1"), iterations[:3]
    assert {epoch for epoch, _ in iterations} == {"2", "3"}
    assert sorted(val_dice(resumed)) == [2, 3]
    assert "Engine run finished" in resumed

    # the killed run's checkpoint went through the rotation: nothing stale is left behind
    assert sorted(p.name for p in models.iterdir()) == [
        f"checkpoint_epoch={EPOCHS}.pt",
        "model_trained.json",
        "model_trained.pt",
    ]
    net.load_state_dict(torch.load(models / "model_trained.pt", weights_only=True))
    final = torch.load(models / f"checkpoint_epoch={EPOCHS}.pt", weights_only=True)
    assert final["trainer"]["iteration"] == EPOCHS * ITERATIONS
    # the best-model tracker survived the restart: model_trained.pt holds the best epoch of BOTH runs
    all_dice = {**val_dice(first), **val_dice(resumed)}
    assert final["best_model_saver"]["_saved"][0][0] == pytest.approx(max(all_dice.values()), abs=1e-4)


def _score_engine(scores: list[float]) -> Engine:
    """A real ignite engine whose epoch ``i`` reports ``scores[i]`` as its key metric, like an evaluator does."""

    def step(engine, batch):
        return batch

    engine = Engine(step)

    @engine.on(Events.EPOCH_COMPLETED)
    def set_metric(engine):
        engine.state.metrics["val_mean_dice"] = scores[engine.state.epoch - 1]
        engine.state.key_metric_name = "val_mean_dice"

    return engine


def _best_model_saver(ckpt_dir: Path, net: torch.nn.Module):
    from scripts.training.checkpoints import AtomicCheckpointSaver

    return AtomicCheckpointSaver(
        save_dir=str(ckpt_dir), save_dict={"model": net}, save_key_metric=True, key_metric_filename="model.pt"
    )


def test_best_score_survives_a_resume(tmp_path):
    net = torch.nn.Linear(2, 2)
    before_crash = _best_model_saver(tmp_path, net)
    engine = _score_engine([0.6, 0.9])
    before_crash.attach(engine)
    engine.run([0], max_epochs=2)
    best = {k: v.clone() for k, v in torch.load(tmp_path / "model.pt", weights_only=True).items()}
    state = before_crash.state_dict()
    assert state["_saved"][0][0] == 0.9

    # the restarted process: new network weights, a worse first validation, then a better one
    torch.nn.init.constant_(net.weight, 7.0)
    after_restart = _best_model_saver(tmp_path, net)
    after_restart.load_state_dict(state)
    engine = _score_engine([0.7])
    after_restart.attach(engine)
    engine.run([0], max_epochs=1)
    kept = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(kept[k], best[k]) for k in best), "a worse model replaced the best model.pt after resume"

    engine = _score_engine([0.95])
    after_restart.attach(engine)
    engine.run([0], max_epochs=1)
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], net.weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


class _FailsToPickle(torch.nn.Module):
    """A module whose state cannot be serialised: ``torch.save`` fails after it started writing the file."""

    def state_dict(self, *args, **kwargs):
        return {"weight": torch.zeros(1000), "bad": lambda: None}


def test_failed_save_keeps_previous_files(tmp_path):
    from scripts.training.checkpoints import AtomicDiskSaver

    saver = AtomicDiskSaver(str(tmp_path))
    saver({"model": {"weight": torch.ones(3)}}, "checkpoint_epoch=1.pt")
    # ignite asks to remove the file being replaced BEFORE it saves the new one; the removal must wait for success
    saver.remove("checkpoint_epoch=1.pt")
    with pytest.raises((pickle.PicklingError, AttributeError)):  # as torch.save reports an unpicklable object
        saver({"model": _FailsToPickle().state_dict()}, "checkpoint_epoch=2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]
    assert torch.equal(
        torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)["model"]["weight"], torch.ones(3)
    )

    saver({"model": {"weight": torch.full((3,), 2.0)}}, "checkpoint_epoch=2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=2.pt"]

    # a fixed file name is replaced in place: it never disappears
    fixed = AtomicDiskSaver(str(tmp_path), filename="model.pt")
    fixed({"weight": torch.ones(2)}, "model_key_metric=0.5.pt")
    fixed.remove("model_key_metric=0.5.pt")
    with pytest.raises((pickle.PicklingError, AttributeError)):  # as torch.save reports an unpicklable object
        fixed(_FailsToPickle().state_dict(), "model_key_metric=0.6.pt")
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], torch.ones(2))


def test_partial_files_from_a_killed_save_are_cleaned(tmp_path):
    from scripts.training.checkpoints import AtomicDiskSaver

    (tmp_path / ".tmp-x1y2z3.pt").write_bytes(b"torn")  # the temporary name atomic_write gives a file being written
    (tmp_path / "model.pt").write_bytes(b"kept")
    AtomicDiskSaver(str(tmp_path), filename="model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]

"""The training recipe's levers, each on its own and through a real ``monai.bundle run training``: the averaged weights
that validation sees and training saves, source-balanced sampling, progressive resizing, the checkpoint schedule and
the compiled training forward."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import torch
from conftest import train_tiny_model
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from torch import nn
from torch.utils.data import RandomSampler

from scripts.acceleration import FastNetwork
from scripts.data.sampling import image_source, source_balanced_sampler
from scripts.training.checkpoints import SaveSchedule
from scripts.training.progressive_resizing import ProgressiveResizing
from scripts.training.weight_averaging import WeightAveraging


def small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def epochs_saved(seconds: float, epoch_seconds: float, epochs: int) -> list[int]:
    """Run a real ignite engine of one-iteration epochs of ``epoch_seconds`` each; the epochs the schedule saved."""
    schedule, saved = SaveSchedule(seconds), []
    engine = Engine(lambda engine, batch: time.sleep(epoch_seconds))
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: saved.append(e.state.epoch) if schedule.due(e) else None)
    engine.run([0], max_epochs=epochs)
    return saved


def test_the_save_schedule_keeps_the_first_and_last_epoch_and_waits_in_between():
    assert epochs_saved(0, 0.0, 6) == [1, 2, 3, 4, 5, 6]  # 0: every epoch, as before
    assert epochs_saved(30, 0.01, 6) == [1, 6]  # short epochs: the first (a resume point early) and the last
    saved = epochs_saved(0.05, 0.02, 12)
    assert saved[0] == 1 and saved[-1] == 12 and 3 <= len(saved) < 12, saved


def test_weight_averaging_is_an_exponential_moving_average_of_weights_and_buffers():
    network = small_network()
    averaging = WeightAveraging(network, decay=0.9)
    assert averaging.model is not network and averaging.model.state_dict().keys() == network.state_dict().keys()
    expected: dict[str, torch.Tensor] = {}
    optimiser = torch.optim.SGD(network.parameters(), lr=0.1)
    for step in range(5):
        network.train()
        loss = network(torch.rand(2, 1, 8, 8) + step).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        averaging.update()
        for name, value in network.state_dict().items():
            if value.is_floating_point():  # the first update copies the weights, the next ones average
                decay = min(0.9, (1 + step) / (10 + step))  # warm-up: short runs are not dominated by their start
                expected[name] = decay * expected[name] + (1 - decay) * value if name in expected else value.clone()
    averaged = averaging.model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name].float(), value, msg=name)
    assert not torch.equal(averaged["1.running_mean"], network.state_dict()["1.running_mean"])
    assert averaging.decay_at(0) == pytest.approx(0.1) and averaging.decay_at(10_000) == 0.9

    restored = WeightAveraging(small_network(), decay=0.9)
    restored.load_state_dict(averaging.state_dict())  # the interval checkpoint carries the average
    torch.testing.assert_close(restored.model.state_dict()["0.weight"], averaged["0.weight"])

    off = WeightAveraging(network, decay=0)
    assert off.model is network and off.state_dict() == {}
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAveraging(network, decay=1.0)


def test_source_balanced_sampling_draws_the_small_source_more_often():
    items = [{"image": f"/d/CHNCXR_{i:04d}_0.png"} for i in range(30)] + [
        {"image": f"/d/MCUCXR_{i:04d}_1.png"} for i in range(6)
    ]
    assert image_source(items[0]) == "CHNCXR" and image_source("/x/MCUCXR_0001_0.png") == "MCUCXR"
    assert image_source("/x/0001.png") == ""
    # off, or one source (nothing to balance): a plain shuffle, the sampler DataLoader(shuffle=True) makes
    assert type(source_balanced_sampler(items, 0)) is RandomSampler
    assert type(source_balanced_sampler(items[:30], 1.0)) is RandomSampler

    def montgomery_share(balance: float) -> float:
        torch.manual_seed(0)
        sampler = source_balanced_sampler(items, balance)
        draws = Counter(image_source(items[i]) for _ in range(300) for i in sampler)
        assert sum(draws.values()) == 300 * len(items)  # an epoch is still one pass's worth of cases
        return draws["MCUCXR"] / sum(draws.values())

    assert montgomery_share(1.0) == pytest.approx(0.5, abs=0.02)  # each source equally often
    assert montgomery_share(0.5) == pytest.approx(6**0.5 / (6**0.5 + 30**0.5), abs=0.02)  # in proportion to sqrt(n)
    with pytest.raises(ValueError, match="source balance"):
        source_balanced_sampler(items, 2)


def test_progressive_resizing_shrinks_the_early_batches_only():
    shapes: dict[int, set] = {}

    def step(engine, batch):
        assert set(batch["label"].unique().tolist()) <= {0.0, 1.0}  # labels stay labels
        shapes.setdefault(engine.state.epoch, set()).add(tuple(batch["image"].shape))

    engine = Engine(step)
    ProgressiveResizing(early_size="24", early_fraction=0.5).attach(engine)  # as typed: one number, a square
    batches = [
        {"image": MetaTensor(torch.rand(2, 1, 32, 32)), "label": MetaTensor((torch.rand(2, 1, 32, 32) > 0.5).float())}
        for _ in range(3)
    ]
    engine.run(batches, max_epochs=4)
    assert shapes == {1: {(2, 1, 24, 24)}, 2: {(2, 1, 24, 24)}, 3: {(2, 1, 32, 32)}, 4: {(2, 1, 32, 32)}}
    with pytest.raises(ValueError, match="early_fraction"):
        ProgressiveResizing((24, 24), early_fraction=1.0)
    with pytest.raises(ValueError, match="image_size must be"):
        ProgressiveResizing("small", early_fraction=0.5)


def test_training_takes_plain_tensors_from_a_monai_batch():
    """MetaTensor's bookkeeping at every op of the forward and backward passes cost a quarter of a training step:
    the network trains on the plain tensor, with the same result."""
    network = small_network().train()
    fast = FastNetwork(network, precision="fp32", channels_last=False)
    x = torch.rand(2, 1, 8, 8)
    out = fast(MetaTensor(x))
    assert type(out) is torch.Tensor and out.requires_grad
    torch.testing.assert_close(out, network(x))
    with torch.no_grad():  # inference outputs keep the batch's meta data, as MONAI's would
        assert isinstance(fast(MetaTensor(x)), MetaTensor)


def test_the_compiled_training_forward_matches_eager():
    network = small_network().train()
    eager = FastNetwork(network, precision="fp32", channels_last=False)
    compiled = FastNetwork(network, precision="fp32", channels_last=False, compile=True)
    assert not any("_orig_mod" in k for k in compiled.state_dict())  # one set of weights, saved as before
    x = torch.rand(2, 1, 16, 16)
    expected = eager(x)
    expected.sum().backward()
    expected_grad = network[0].weight.grad.clone()
    network.zero_grad()
    out = compiled(x)
    out.sum().backward()
    # the same arithmetic in another order (Inductor's fused kernels): equal to float32 rounding, not bit for bit
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(network[0].weight.grad, expected_grad, rtol=1e-2, atol=1e-3)


@pytest.mark.slow
def test_training_with_every_lever_saves_the_averaged_model(tmp_path):
    """The levers as a user types them: the saved model is the weight average, which the checkpoint also carries."""
    trained = train_tiny_model(
        tmp_path,
        num_cases=10,
        image_size=64,
        epochs=3,
        extra=(
            "--train#weight_averaging#decay", "0.9",
            "--train#sampler#balance", "0.5",
            "--train#early_epochs_fraction", "0.4",
            "--train#early_image_size", "[32,32]",
            "--train#checkpoint_every_s", "0",
            "--split#val_fraction", "0",
        ),
    )  # fmt: skip
    models = trained["models"]
    saved = torch.load(models / "model_trained.pt", weights_only=True)
    checkpoint = torch.load(models / "checkpoint_epoch=3.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in checkpoint["weight_averaging"].items()}
    assert int(averaged.pop("n_averaged")) == checkpoint["trainer"]["iteration"]
    for name, value in saved.items():
        torch.testing.assert_close(value, averaged[name], msg=name)
    trained_weight = checkpoint["model"]["classifier.weight"]
    assert not torch.equal(saved["classifier.weight"], trained_weight)  # the average, not the last step

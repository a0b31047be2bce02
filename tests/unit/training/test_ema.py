"""brainmri/training/ema.py: the weight average of ``train.ema``, inside the real TrainStep.

The average after each optimizer step is checked against the formula computed by hand from
snapshots of the trained weights, with timm's decay warm-up; a checkpoint round trip keeps
the weights and the update count the warm-up depends on.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from torch import nn

from brainmri.config import OptimConfig, TrainConfig
from brainmri.errors import CheckpointError
from brainmri.training.ema import WeightAverage
from brainmri.training.optim import build_optimizer, build_scheduler
from brainmri.training.step import Training, TrainStep

pytestmark = pytest.mark.usefixtures("fresh_state")


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4))


def make_step(decay: float, grad_accum: int = 1, precision: str = "no") -> tuple[TrainStep, nn.Module, WeightAverage]:
    model = net()
    acc = Accelerator(cpu=True, gradient_accumulation_steps=grad_accum, mixed_precision=precision)
    average = WeightAverage(model, decay, acc.device, acc.autocast)
    optim = OptimConfig(name="sgd", lr=0.1)
    optimizer = build_optimizer(model, optim)
    prepared, optimizer = acc.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer, optim, steps_per_epoch=8, epochs=1)
    train = TrainConfig(channels_last=False)
    criterion = nn.CrossEntropyLoss(reduction="none")
    step = TrainStep(acc, prepared, optimizer, scheduler, criterion, train, None, average=average)
    return step, model, average


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, 1, 8, 8, generator=generator), torch.arange(8) % 4


def warmup_decay(update: int, cap: float) -> float:
    """timm's warm-up (inv_gamma 1, power 2/3) as the module's docstring states it."""
    n = update - 1
    return 0.0 if n <= 0 else min(cap, 1 - (1 + n) ** (-2 / 3))


def test_the_average_follows_each_optimizer_step_with_the_warm_up_decay():
    step, model, average = make_step(decay=0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for update in range(1, 6):
        step(*batch(update))
        decay = warmup_decay(update, 0.5)
        assert average.updates == update and average.current_decay() == pytest.approx(decay)
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                expected[key] = decay * expected[key] + (1 - decay) * value
            else:  # BatchNorm's batch count is copied
                expected[key] = value.clone()
        for key, value in average.module.state_dict().items():
            torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)
    # The first update copied the trained weights (decay 0); the later ones lag behind them.
    assert not torch.equal(average.module[0].weight, model[0].weight)


def test_the_average_moves_once_per_optimizer_step_not_per_batch():
    step, _, average = make_step(decay=0.9, grad_accum=2)
    for i in range(4):
        step(*batch(i))
    assert average.updates == 2


def test_a_step_the_loss_scaler_skipped_leaves_the_average_alone():
    step, _, average = make_step(decay=0.9)
    step(*batch(0))
    skipped = mock.patch.object(Accelerator, "optimizer_step_was_skipped", new_callable=mock.PropertyMock)
    with skipped as was_skipped:
        was_skipped.return_value = True
        before = {k: v.clone() for k, v in average.module.state_dict().items()}
        step(*batch(1))
    assert average.updates == 1
    assert all(torch.equal(v, before[k]) for k, v in average.module.state_dict().items())


def test_the_average_is_scored_in_the_runs_precision():
    """Made before Accelerate wraps the model, the average carries no autocast of its own:
    evaluation gives it the run's (bf16 here, as on a CPU with bf16 units)."""
    step, _, average = make_step(decay=0.9, precision="bf16")
    training = Training(step, train_loader=None, val_loader=None, test_loader=None, eval_transform=None,
                        steps_per_epoch=8, loaders=None)  # fmt: skip
    images = batch(0)[0]
    assert average.module(images).dtype == torch.float32
    with training.eval_precision():
        assert training.eval_model(images).dtype == torch.bfloat16


def test_training_scores_the_average_and_the_bare_model_without_one():
    step, model, average = make_step(decay=0.9)
    training = Training(step, train_loader=None, val_loader=None, test_loader=None, eval_transform=None,
                        steps_per_epoch=8, loaders=None)  # fmt: skip
    assert training.eval_model is average.module and not average.module.training
    step.average = None
    assert training.eval_model is step.model


def test_a_checkpoint_round_trip_keeps_the_weights_and_the_update_count(tmp_path):
    step, _, average = make_step(decay=0.99)
    for i in range(3):
        step(*batch(i))
    average.save(tmp_path)
    saved = {k: v.clone() for k, v in average.module.state_dict().items()}

    fresh = WeightAverage(net(), 0.99, torch.device("cpu"))
    assert fresh.load(tmp_path)
    assert fresh.updates == 3 and fresh.current_decay() == pytest.approx(warmup_decay(3, 0.99))
    for key, value in fresh.module.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_a_checkpoint_without_an_average_changes_nothing(tmp_path):
    average = WeightAverage(net(), 0.99, torch.device("cpu"))
    assert not average.load(tmp_path)
    assert average.updates == 0  # so its first update copies the resumed weights


def test_an_average_file_without_its_update_count_is_refused(tmp_path):
    tensors = {k: v.contiguous() for k, v in net().state_dict().items()}
    save_file(tensors, str(tmp_path / WeightAverage.FILE))
    with pytest.raises(CheckpointError, match="has no update count"):
        WeightAverage(net(), 0.99, torch.device("cpu")).load(tmp_path)


def _share_on_rank(rank: int, port: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        average = WeightAverage(net(), 0.9, torch.device("cpu"))
        bn = average.module[1]
        with torch.no_grad():
            bn.running_mean.fill_(float(rank + 1))  # each rank's own statistics, as between DDP's broadcasts
            bn.weight.fill_(float(rank + 5))  # a parameter: never broadcast (the ranks' already agree)
        average.share()
        torch.save({"mean": bn.running_mean.clone(), "weight": bn.weight.clone()}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_before_an_evaluation_every_rank_takes_rank_0s_batchnorm_statistics(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_share_on_rank, args=(port, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(torch.equal(r["mean"], torch.full((4,), 1.0)) for r in ranks)
    assert [float(r["weight"][0]) for r in ranks] == [5.0, 6.0]

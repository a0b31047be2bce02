"""brainmri/distributed.py: the precision rule, one rank's result for all, the stop signal,
and predictions gathered across ranks."""

from __future__ import annotations

import threading

import pytest
import torch

from brainmri.distributed import PredictionBuffer, StopSignal, cpu_has_native_bf16, on_main, resolve_precision
from brainmri.errors import DatasetError

CPU = torch.device("cpu")


def test_explicit_precisions_are_kept_and_fp16_is_fp32_on_a_cpu():
    assert resolve_precision("no", CPU) == "no"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("fp16", CPU) == "no"  # fp16 autocast is a GPU feature
    assert resolve_precision("fp16", torch.device("cuda")) == "fp16"


def test_auto_precision_follows_the_cpu():
    assert resolve_precision("auto", CPU) == ("bf16" if cpu_has_native_bf16() else "no")
    assert cpu_has_native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class FakeAccelerator:
    """What the helpers use of an Accelerator, for ``world`` ranks on one machine.

    ``gather`` stands in for the collective: it returns every rank's padded rows, which
    the test hands in up front (the real one exchanges them over gloo or NCCL).
    """

    def __init__(self, world: int = 1, rank: int = 0, others: list[torch.Tensor] | None = None):
        self.num_processes = world
        self.is_main_process = rank == 0
        self.device = CPU
        self.others = others or []

    def pad_across_processes(self, tensor: torch.Tensor, dim: int = 0, pad_index: int = 0) -> torch.Tensor:
        longest = max([len(tensor), *[len(o) for o in self.others]])
        pad = torch.full((longest - len(tensor), tensor.shape[1]), float(pad_index))
        return torch.cat([tensor, pad])

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        longest = len(tensor)
        padded = [torch.cat([o, torch.full((longest - len(o), o.shape[1]), -1.0)]) for o in self.others]
        return torch.cat([tensor, *padded])

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor


def rows_of(buffer: PredictionBuffer) -> torch.Tensor:
    return torch.cat(buffer.rows)


def test_predictions_of_two_ranks_come_back_once_each_in_index_order():
    """A distributed sampler gives 5 samples to 2 ranks as [0, 2, 4] and [1, 3, 0]: sample 0
    twice, to even out the batches. The gather must count it once and sort by index."""
    logits = torch.eye(5, 4)
    targets = torch.tensor([0, 1, 2, 3, 0])
    losses = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5])
    rank1 = PredictionBuffer(4)
    rank1.add(torch.tensor([1, 3]), logits[[1, 3]], targets[[1, 3]], losses[[1, 3]])
    rank1.add(torch.tensor([0]), logits[[0]], targets[[0]], losses[[0]])
    rank0 = PredictionBuffer(4)
    rank0.add(torch.tensor([0, 2]), logits[[0, 2]], targets[[0, 2]], losses[[0, 2]])
    rank0.add(torch.tensor([4]), logits[[4]], targets[[4]], losses[[4]])
    gathered = rank0.gather(FakeAccelerator(world=2, others=[rows_of(rank1)]))
    assert torch.equal(gathered.logits, logits)
    assert gathered.targets.tolist() == targets.tolist()
    assert gathered.losses.tolist() == pytest.approx(losses.tolist())


def test_a_rank_with_no_batches_still_takes_part():
    other = PredictionBuffer(4)
    other.add(torch.tensor([0]), torch.ones(1, 4), torch.tensor([2]), torch.tensor([0.1]))
    gathered = PredictionBuffer(4).gather(FakeAccelerator(world=2, others=[rows_of(other)]))
    assert gathered.targets.tolist() == [2] and gathered.logits.shape == (1, 4)


def test_on_main_returns_the_value_or_raises_the_toolkit_error():
    acc = FakeAccelerator()
    assert on_main(acc, lambda: 7) == 7
    with pytest.raises(DatasetError, match="no Training"):
        on_main(acc, lambda: (_ for _ in ()).throw(DatasetError("no Training/ folder")))
    with pytest.raises(ZeroDivisionError):
        on_main(acc, lambda: 1 / 0)


def test_stop_signal_reads_the_event_without_a_device_round_trip_on_one_process():
    event = threading.Event()
    assert not StopSignal(FakeAccelerator(), None).requested()
    signal = StopSignal(FakeAccelerator(), event)
    assert not signal.requested()
    event.set()
    assert signal.requested()


def test_stop_signal_is_shared_through_a_collective_on_several_processes():
    class Summing(FakeAccelerator):
        def reduce(self, tensor, reduction="sum"):
            return tensor + 1.0  # another rank has seen the signal

    assert StopSignal(Summing(world=2), threading.Event()).requested()

"""brainmri/training/distributed.py: the precision rule, one rank's result for all, the stop signal,
and predictions gathered across ranks."""

from __future__ import annotations

import datetime
import threading

import pytest
import torch

from brainmri.errors import DatasetError
from brainmri.training.distributed import PredictionBuffer, StopSignal, cpu_has_native_bf16, on_main, resolve_precision

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
    assert not StopSignal(FakeAccelerator(), None).poll()[0]
    signal = StopSignal(FakeAccelerator(), event)
    assert not signal.poll()[0]
    event.set()
    assert signal.poll()[0]


def test_stop_signal_is_a_host_flag_reduced_over_gloo_on_several_processes(monkeypatch):
    """Under NCCL the flag must not be a device tensor (reading it back would sync the host
    with the GPU every step): it is a CPU tensor reduced over a gloo side group."""
    import torch.distributed as dist

    reduced, groups = [], []

    def all_reduce(tensor, op=None, group=None):
        reduced.append((tensor.device.type, group))
        tensor += 1  # another rank has seen the signal

    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(
        dist, "new_group", lambda backend=None, timeout=None: groups.append((backend, timeout)) or "gloo-group"
    )
    monkeypatch.setattr(dist, "all_reduce", all_reduce)

    class NoDeviceReduce(FakeAccelerator):
        def reduce(self, tensor, reduction="sum"):
            raise AssertionError("the stop flag must not go through the device collective")

    signal = StopSignal(NoDeviceReduce(world=2), threading.Event(), collective_timeout=600)
    assert groups == [("gloo", datetime.timedelta(seconds=600))]
    assert signal.poll()[0] and reduced == [("cpu", "gloo-group")]
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")  # on CPUs the default group is gloo already
    assert StopSignal(NoDeviceReduce(world=2), threading.Event()).group is None


@pytest.mark.parametrize(
    "capability, expected",
    [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")],
    ids=["V100", "T4", "A100", "H100"],
)
def test_auto_precision_on_a_gpu_follows_its_compute_capability(monkeypatch, capability, expected):
    """bf16 needs Ampere's tensor cores; torch.cuda.is_bf16_supported() says yes to emulation too."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected
    assert resolve_precision("bf16", torch.device("cuda", 0)) == "bf16"  # asked for explicitly: kept


def test_the_collective_timeout_reaches_the_process_group(monkeypatch):
    """The process group is created by the first PartialState, before the Accelerator: the
    timeout has to be given there (a timeout given to the Accelerator would be ignored)."""
    import accelerate
    from accelerate.state import AcceleratorState

    from brainmri.config import TrainConfig
    from brainmri.training import distributed

    seen = {}

    def init_process_group(backend=None, **kwargs):
        seen.update(backend=backend, **kwargs)

    env = {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29999",
        "OMP_NUM_THREADS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: bool(seen))
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    AcceleratorState._reset_state(True)
    try:
        state = distributed.distributed_state(TrainConfig(collective_timeout=90).collective_timeout)
        assert isinstance(state, accelerate.PartialState) and state.num_processes == 2
    finally:
        AcceleratorState._reset_state(True)
    assert seen["backend"] == "gloo" and seen["timeout"] == datetime.timedelta(seconds=90)


def test_plain_model_reaches_a_compiled_module_inside_ddp(tmp_path):
    """``train.compile`` prepares as DDP(compiled): Accelerate's unwrap stops at the compile
    wrapper there, and the weights would carry ``_orig_mod.`` keys that evaluation refuses."""
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from brainmri.training.distributed import plain_model
    from brainmri.weights import without_compile_prefix

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(torch.compile(net, backend="eager"))
        acc = Accelerator(cpu=True)
        assert any("_orig_mod" in k for k in acc.unwrap_model(wrapped, keep_torch_compile=False).state_dict())
        assert plain_model(acc, wrapped) is net
        assert plain_model(acc, torch.compile(net, backend="eager")) is net
    finally:
        dist.destroy_process_group()
        AcceleratorState._reset_state(True)
    prefixed = {f"_orig_mod.{k}": v for k, v in net.state_dict().items()}  # what such runs wrote
    assert without_compile_prefix(prefixed).keys() == net.state_dict().keys()


def test_a_rolling_checkpoint_is_due_when_the_main_process_says_so(monkeypatch):
    """The flags travel together: [stop from any rank, due from the main process only]."""
    import torch.distributed as dist

    sent = []

    def all_reduce(tensor, op=None, group=None):
        sent.append(tensor.tolist())
        tensor += torch.tensor([0, 1], dtype=torch.int32)  # the main process's clock says due

    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    worker = FakeAccelerator(world=2, rank=1)
    signal = StopSignal(worker, None, rolling=True)
    assert signal.poll(checkpoint_due=True) == (False, True) and sent == [[0, 0]]  # a worker's clock does not count
    assert StopSignal(FakeAccelerator(), None, rolling=True).poll(checkpoint_due=True) == (False, True)
    idle = StopSignal(worker, None)  # no stop event, no rolling checkpoints: no collective at all
    assert idle.poll(checkpoint_due=False) == (False, False) and len(sent) == 1


def test_plain_model_leaves_the_autocast_on_and_full_precision_forward_lifts_it_for_a_with():
    """Accelerate's unwrap with ``keep_fp32_wrapper=False`` takes autocast off the module in
    place: a run that once counted its parameters trained every later step in fp32."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from brainmri.training.distributed import full_precision_forward, plain_model

    seen = []
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    net[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        acc = Accelerator(cpu=True, mixed_precision="bf16")
        model = acc.prepare(net)
        x = torch.randn(2, 1, 8, 8)
        assert plain_model(acc, model) is net
        assert model(x).dtype == torch.float32 and seen[-1] == torch.bfloat16  # still autocast after unwrapping
        with full_precision_forward(plain_model(acc, model)) as plain:
            plain(x)
            assert seen[-1] == torch.float32
        model(x)
        assert seen[-1] == torch.bfloat16  # and back after the with
        with full_precision_forward(torch.nn.Linear(2, 2)) as untouched:  # no autocast on it: nothing to lift
            assert "forward" not in untouched.__dict__
    finally:
        AcceleratorState._reset_state(True)

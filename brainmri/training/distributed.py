"""What every rank of a run shares: the accelerator and its precision, one rank's result
broadcast to all, the collective stop signal, and predictions gathered across ranks.

The same code runs on one CPU, one GPU, or many processes across nodes: Accelerate reads
the distributed environment that ``accelerate launch`` (or the SLURM launcher) exported.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from typing import Callable, Iterator, Optional, Sequence, TypeVar, Union

import torch
import torch.distributed as dist
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration
from accelerate.utils import broadcast_object_list as accelerate_broadcast
from torch import nn

from brainmri.config import TrainConfig
from brainmri.data.cache import LOCK_TIMEOUT
from brainmri.errors import BrainMRIError
from brainmri.records import Predictions

T = TypeVar("T")


class TrainingInterrupted(Exception):
    """Every rank stopped at the same step because a stop was requested (preemption, time limit).

    The epoch in flight is dropped; the newest complete checkpoint is where ``resume=auto``
    continues, so the history still holds each epoch exactly once.
    """


class RankLost(Exception):
    """A collective failed because another rank died or stopped answering; the message names
    it (rank, node, last step). Not the user's error: a SLURM job requeues itself and resumes."""


COLLECTIVE_FAILURES = (
    "connection reset",
    "connection closed",
    "broken pipe",
    "timed out",
    "timeout",
    "socket",
    "nccl",
    "gloo",
    "peer",
)


def collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed (a peer gone, a timeout), not a bug."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(word in text for word in COLLECTIVE_FAILURES)


def no_accelerator() -> bool:
    """True on CPU-only machines: Accelerate then runs several processes over gloo."""
    return not torch.cuda.is_available() and not torch.backends.mps.is_available()


def distributed_state(collective_timeout: float) -> PartialState:
    """Accelerate's process state, created the same way the Trainer's Accelerator will be.

    The first call creates the process group (under a launcher), so ``collective_timeout``
    (seconds, ``train.collective_timeout``) is given here: Accelerate's state is a singleton,
    and a timeout handed to the Accelerator later would be ignored. It replaces NCCL's
    10-minute default, which rank 0's first scan of a large dataset can outlast while the
    other ranks wait in a collective.
    """
    return PartialState(cpu=no_accelerator(), timeout=timedelta(seconds=collective_timeout))


def default_device() -> torch.device:
    """This process's device: its GPU when it has one, else the CPU (evaluation, prediction).

    Made without a process group: the tools that call this run one process."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("mps") if torch.backends.mps.is_available() else torch.device("cpu")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU computes bf16 itself instead of emulating it.

    oneDNN's own answer, so a build or an ``ONEDNN_MAX_CPU_ISA`` limit that hides the
    units counts as "no", as it should: the kernels then emulate.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Compute capability 8.0 (Ampere) or newer: bf16 tensor cores.

    ``torch.cuda.is_bf16_supported()`` also says yes on a V100 or T4, where bf16 is emulated
    and slow; those get fp16 with a loss scaler instead.
    """
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs and CPUs with bf16 units, fp16 (scaled) on older GPUs, else fp32.

    CPUs without native bf16 (AVX2-only, for instance) emulate it at a fraction of fp32
    speed, so ``auto`` never picks it there. fp16 autocast is a GPU feature: asked for on
    a CPU, it runs in fp32.
    """
    if requested == "fp16" and device.type == "cpu":
        return "no"
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no"


CPU_FP32_MICRO_BATCH = 16  # images a slice where a CPU trains in fp32 (docs/performance.md)


def resolve_micro_batch(requested: Union[int, str], batch_size: int, precision: str, device: torch.device) -> int:
    """Images in each forward and backward slice of a batch; 0 for the whole batch at once.

    ``auto``: 16 on a CPU that trains in fp32 (``precision`` is Accelerate's resolved one, ``no``).
    There oneDNN's fp32 kernels ran 16-image slices faster per image than batches of 32 or
    64 (AVX2 kernels, 224 and 512 px), and the notebooks' batch 16 was ahead of the toolkit's
    batch 64 at 224 px; with bf16 units, or on a GPU, whole batches are faster.
    """
    if requested == "auto":
        requested = CPU_FP32_MICRO_BATCH if device.type == "cpu" and precision == "no" else 0
    return 0 if requested == 0 or requested >= batch_size else int(requested)


def make_accelerator(train: TrainConfig, seed: int) -> Accelerator:
    """The one Accelerator of a process, configured from ``train.*``.

    ``seed`` seeds the training shuffle, the same on every rank: without it Accelerate's
    seedable sampler takes torch's initial seed, which ``set_seed(device_specific=True)``
    makes differ per rank, and the ranks' shares of an epoch overlap (a quarter of the
    images unseen each epoch with 2 ranks)."""
    state = distributed_state(train.collective_timeout)
    on_gpu = state.device.type == "cuda"
    return Accelerator(
        cpu=no_accelerator(),
        mixed_precision=resolve_precision(train.mixed_precision, state.device),
        gradient_accumulation_steps=train.grad_accum,
        # Pinned host memory (the loaders pin on CUDA) lets the copy overlap the step.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed, non_blocking=on_gpu),
    )


def local_process_count(accelerator: Accelerator) -> int:
    """Processes sharing this node's CPUs: one per visible GPU, else every process (one node)."""
    if accelerator.device.type == "cuda":
        return max(1, min(accelerator.num_processes, torch.cuda.device_count()))
    return accelerator.num_processes


# How long ranks wait for the main process's preparation (a first scan of a large dataset) or
# for another node's image cache: the cache lock's own limit, far above train.collective_timeout.
PREPARE_TIMEOUT = LOCK_TIMEOUT


def preparation_group(accelerator: Accelerator) -> Optional[dist.ProcessGroup]:
    """A gloo group over every rank with :data:`PREPARE_TIMEOUT`, for the waits of run
    preparation, so that ``train.collective_timeout`` can be short for training's collectives."""
    if accelerator.num_processes == 1:
        return None
    return dist.new_group(backend="gloo", timeout=timedelta(seconds=PREPARE_TIMEOUT))


def on_main(accelerator: Accelerator, fn: Callable[[], T], group: Optional[dist.ProcessGroup] = None) -> T:
    """Run ``fn`` on the main process and hand its result (or its error) to every rank.

    Scanning data or checking the run dir once, and failing on every rank with the same
    message, avoids both duplicated work and ranks hanging at a barrier. ``group``: the
    :func:`preparation_group` to wait in (default: the default group and its timeout).
    """
    payload: list = [None]
    many = accelerator.num_processes > 1

    def broadcast_object_list(objects: list, from_process: int) -> None:
        if group is None:
            accelerate_broadcast(objects, from_process=from_process)
        else:
            dist.broadcast_object_list(objects, src=from_process, group=group)

    if accelerator.is_main_process:
        try:
            payload[0] = ("ok", fn())
        except BrainMRIError as e:
            payload[0] = ("error", e)
        except Exception as e:  # a bug: still release the other ranks before raising
            payload[0] = ("crash", f"{type(e).__name__}: {e}")
            if many:
                broadcast_object_list(payload, from_process=0)
            raise
    if many:
        broadcast_object_list(payload, from_process=0)
    status, value = payload[0]
    if status == "error":
        raise value
    if status == "crash":
        raise RuntimeError(f"main process failed: {value}")
    return value


def plain_model(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The user's module inside every wrapper: DDP and ``torch.compile``.

    Its ``state_dict`` keys are the architecture's own, so weights saved from it load into
    an uncompiled model. Accelerate's autocast stays on the module: its unwrap with
    ``keep_fp32_wrapper=False`` takes it off in place, and every later training step ran in
    fp32 (the 1.5x slower step that a run said was bf16). :func:`full_precision_forward`
    lifts it for the length of a ``with``. Accelerate's unwrap does not reach a compiled
    module inside DDP (``DDP(compiled)``, the order ``train.compile`` prepares in), so the
    compile wrapper is removed here too.
    """
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=True, keep_torch_compile=False)
    while isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        model = model._orig_mod
    return model


@contextmanager
def full_precision_forward(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` running its own forward, without the autocast Accelerate put on it, until the
    ``with`` ends; then the autocast forward is back. Grad-CAM reads activations and gradients
    as fp32 arrays."""
    original = module.__dict__.get("_original_forward")  # Accelerate keeps the unwrapped forward here
    wrapped = module.__dict__.get("forward")
    if original is None or wrapped is None:
        yield module
        return
    module.forward = original
    try:
        yield module
    finally:
        module.forward = wrapped


def host_group(collective_timeout: float) -> Optional[dist.ProcessGroup]:
    """A gloo process group over every rank, for small host-side flags.

    ``None`` (the default group) when that is gloo already. Under NCCL, a flag shared through
    the default group lives on the GPU, and reading it back makes the host wait for every
    queued kernel: the host could never run ahead of the device.
    """
    if dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo", timeout=timedelta(seconds=collective_timeout))


class StopSignal:
    """A stop request (a signal handler sets the event on any rank) and the main process's
    "a rolling checkpoint is due", which all ranks obey together.

    Only one rank may have seen the signal, and only the main process's clock decides when a
    checkpoint is due, so both flags are shared with a collective; every rank asks at the same
    points, so none is left waiting in another collective. The flags are a CPU tensor reduced
    over gloo (:func:`host_group`): no device tensor, no host sync.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        event: Optional[threading.Event],
        collective_timeout: float = 1800.0,
        rolling: bool = False,
    ):
        self.accelerator = accelerator
        self.event = event
        self.active = event is not None or rolling  # nothing to share: no collective at all
        self.group = None
        if self.active and accelerator.num_processes > 1:
            self.group = host_group(collective_timeout)

    def poll(self, checkpoint_due: bool = False) -> tuple[bool, bool]:
        """(stop requested on any rank, checkpoint due by the main process's clock)."""
        stop = self.event is not None and self.event.is_set()
        if not self.active or self.accelerator.num_processes == 1:
            return stop, checkpoint_due
        due = checkpoint_due and self.accelerator.is_main_process
        flags = torch.tensor([int(stop), int(due)], dtype=torch.int32)  # host memory
        dist.all_reduce(flags, op=dist.ReduceOp.SUM, group=self.group)
        return bool(flags[0] > 0), bool(flags[1] > 0)


class PredictionBuffer:
    """Collects a rank's batches, then gathers every rank's into one :class:`Predictions`.

    Distributed samplers pad the last batch with repeated samples so every rank gets the
    same count; carrying the dataset index lets the gather drop those repeats.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.rows: list[torch.Tensor] = []

    def add(self, index: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor) -> None:
        columns: Sequence[torch.Tensor] = (
            index.float().unsqueeze(1),
            targets.float().unsqueeze(1),
            losses.float().unsqueeze(1),
            logits.float(),
        )
        self.rows.append(torch.cat([c.to(logits.device) for c in columns], dim=1).detach())

    def add_rows(self, rows: torch.Tensor) -> None:
        """Rows gathered earlier (:meth:`gather_rows`): a mid-epoch checkpoint's part of the epoch."""
        if len(rows):
            self.rows.append(rows.detach())

    def gather_rows(self, accelerator: Accelerator) -> torch.Tensor:
        """Every rank's rows on every rank (CPU), each sample once, sorted by dataset index."""
        if self.rows:
            local = torch.cat([r.to(accelerator.device) for r in self.rows])
        else:
            local = torch.zeros(0, 3 + self.num_classes, device=accelerator.device)
        padded = accelerator.pad_across_processes(local, dim=0, pad_index=-1)
        rows = accelerator.gather(padded).cpu()
        rows = rows[rows[:, 0] >= 0]
        rows = rows[torch.argsort(rows[:, 0], stable=True)]
        keep = torch.ones(len(rows), dtype=torch.bool)
        keep[1:] = rows[1:, 0] != rows[:-1, 0]
        return rows[keep]

    def gather(self, accelerator: Accelerator) -> Predictions:
        rows = self.gather_rows(accelerator)
        return Predictions(logits=rows[:, 3:], targets=rows[:, 1].long(), losses=rows[:, 2])

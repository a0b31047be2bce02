"""The exponential moving average of a run's weights (``train.ema``): updated after each
optimizer step, saved in each checkpoint, and the model that validation, the best weights and
the test phase use.

The average itself is timm's :class:`~timm.utils.ModelEmaV3` with its decay warm-up, so a
short run is not dominated by its random start: the decay of the ``n``-th update is
``min(ema, 1 - n ** -2/3)`` (0 for the first: it copies the weights). What this module adds
is the update count, which the warm-up depends on and a resume must restore, and a file of its
own in the checkpoint folder (safetensors, like the model: a checkpoint holds no code).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, ContextManager, Optional

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from timm.utils.model_ema import ModelEmaV3
from torch import nn

from brainmri.errors import CheckpointError

__all__ = ["WeightAverage"]


class WeightAverage:
    """A moving average of ``model``'s parameters and buffers, in fp32 on the model's device.

    Made from the bare model before Accelerate prepares it: a copy of a prepared model would
    carry Accelerate's autocast forward. ``autocast`` (Accelerate's ``accelerator.autocast``)
    gives a forward of the average the run's precision.
    """

    FILE = "ema.safetensors"
    UPDATES = "updates"  # metadata key of the update count

    def __init__(
        self,
        model: nn.Module,
        decay: float,
        device: torch.device,
        autocast: Optional[Callable[[], ContextManager]] = None,
    ):
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True).to(device)
        self.updates = 0
        self._autocast = autocast

    @property
    def module(self) -> nn.Module:
        """The averaged model (always in eval mode)."""
        return self.ema.module

    def autocast(self) -> ContextManager:
        """The run's mixed precision for a forward of the average (Accelerate's own context)."""
        return self._autocast() if self._autocast is not None else contextlib.nullcontext()

    def current_decay(self) -> float:
        return self.ema.get_decay(self.updates)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One more optimizer step's weights into the average; ``model`` is the bare module
        (its ``state_dict`` keys are the average's)."""
        self.updates += 1
        self.ema.update(model, step=self.updates)

    @torch.no_grad()
    def share(self) -> None:
        """Every rank's average made rank 0's (the one checkpoints and the best weights hold).

        The averaged parameters agree on every rank (the same updates of the same weights), but
        BatchNorm's running statistics are each rank's own between DDP's buffer broadcasts, so
        their averages drift apart; before an evaluation, whose ranks score different images,
        the buffers are made one again."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for buffer in self.module.buffers():
                dist.broadcast(buffer, src=0)

    def save(self, folder: Path) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        save_file(tensors, str(folder / self.FILE), metadata={self.UPDATES: str(self.updates)})

    def load(self, folder: Path) -> bool:
        """The average a checkpoint saved; False (nothing changed) when it saved none."""
        path = folder / self.FILE
        if not path.is_file():
            return False
        with safe_open(str(path), "pt") as f:  # one read: the count and the tensors
            updates = (f.metadata() or {}).get(self.UPDATES)
            if updates is None:
                raise CheckpointError(f"{path} has no update count: it was not written by this brainmri")
            self.module.load_state_dict({key: f.get_tensor(key) for key in f.keys()})
        self.updates = int(updates)
        return True

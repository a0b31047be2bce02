"""Loading weights and checkpoints without ever running pickled code.

A ``.pth`` file is a pickle, and unpickling can run any Python it names: a checkpoint
downloaded from a colleague or a forum must not be able to do that. Every place in
brainmri that reads weights (resume, evaluate, predict, ``model.pretrained_file``) goes
through this module: safetensors files are read as plain tensors, anything else through
``torch.load(weights_only=True)``, whose unpickler refuses every callable outside a short
allow-list (tensors, containers, numbers, numpy arrays for RNG states).

It also owns what a ``.safetensors`` file carries besides tensors (its metadata): the
run's config and dataset description, and the :class:`~brainmri.records.InferenceSpec` with
the temperature, so that a weights file alone predicts exactly as its run directory does.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from brainmri.config import Config
from brainmri.errors import CheckpointError
from brainmri.records import DatasetInfo, InferenceSpec

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def _refuse(path: Path, error: BaseException) -> CheckpointError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CheckpointError(
        f"refusing to load {path}: it is not a plain weights file (the safe unpickler stopped at: {reason}); "
        "nothing in it was run. Use a .safetensors file or a state dict saved with torch.save"
    )


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` that only rebuilds tensors, containers, numbers and numpy arrays.

    numpy's array reconstructors are allowed because Accelerate stores RNG states with them;
    a pickle that names anything else (``os.system``, a class with ``__reduce__``) is refused
    before it can run.
    """
    from accelerate.utils import load as accelerate_load  # weights_only=True plus numpy's safe globals

    try:
        return accelerate_load(str(path), map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as e:
        raise _refuse(path, e) from None


COMPILE_PREFIX = "_orig_mod."


def without_compile_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of a ``torch.compile``'d model's state dict as the plain model names them.

    Weights that compiled runs wrote before the fix (and Accelerate checkpoints of
    compiled models) carry ``_orig_mod.`` in every key; the architecture has no such prefix.
    """
    return {k.replace(COMPILE_PREFIX, "", 1) if k.startswith(COMPILE_PREFIX) else k: v for k, v in state.items()}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from ``.safetensors`` or a torch file, refusing pickled code.

    Wrapped dicts that training libraries write (``{"state_dict": ...}``, ``{"model": ...}``)
    are unwrapped, and so are the keys of a compiled model (:func:`without_compile_prefix`).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return without_compile_prefix(load_file(str(path), device="cpu"))
        except Exception as e:  # a truncated or foreign file: one line is enough
            raise CheckpointError(f"cannot read {path} as safetensors: {str(e).splitlines()[0]}") from None
    obj = safe_torch_load(path)
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return without_compile_prefix(obj)


def verify_checkpoint_folder(folder: Path) -> None:
    """Check every pickle in an Accelerate checkpoint folder with the safe unpickler.

    Accelerate itself loads optimizer, sampler and RNG files with ``weights_only=True``;
    checking first turns a planted file into one clear error before any state is touched.
    """
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in PICKLE_SUFFIXES:
            safe_torch_load(path)


INFERENCE_KEY = "inference"  # the InferenceSpec's JSON
CALIBRATION_KEY = "calibration"  # the fitted temperature's record (calibration.json's content)


def inference_spec(cfg: Config, info: DatasetInfo, normalize: Optional[str] = None) -> InferenceSpec:
    """The spec of a model trained with ``cfg`` on data measured as ``info`` (not yet calibrated);
    ``normalize``: the run's resolved ``augment.normalize``."""
    model_args = {k: v for k, v in asdict(cfg.model).items() if k not in ("name", "pretrained", "pretrained_file")}
    return InferenceSpec(
        class_names=list(info.class_names),
        image_size=cfg.data.image_size,
        channels=cfg.data.channels,
        mean=list(info.mean),
        std=list(info.std),
        model=cfg.model.name,
        model_args={**model_args, "in_chans": cfg.in_chans},
        tta=cfg.train.tta,
        normalize=normalize,
    )


def read_spec(metadata: dict[str, str]) -> Optional[InferenceSpec]:
    """The spec in a weights file's metadata; None for files written before it existed."""
    return InferenceSpec.from_json(json.loads(metadata[INFERENCE_KEY])) if INFERENCE_KEY in metadata else None


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file (empty for other formats)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # a truncated or foreign file: one line is enough
        raise CheckpointError(f"cannot read {path} as safetensors: {str(e).splitlines()[0]}") from None


def update_metadata(path: Path, entries: dict[str, str]) -> None:
    """Add or replace metadata entries of a ``.safetensors`` file, tensors untouched: written
    beside it, then renamed over it (a reader sees the old file or the whole new one)."""
    from safetensors.torch import load_file, save_file

    from brainmri.rundir import atomic_replace

    path = Path(path)
    metadata = {**read_metadata(path), **entries}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(load_file(str(path), device="cpu"), str(tmp), metadata=metadata)
    atomic_replace(tmp, path)

"""Model registry: ``create_model(name, ...)`` for registered names and any timm model.

Registered: the study CNNs ``cnn0``..``cnn3``; everything else (``resnet18`` included) is
built by timm, so ``model.name=convnext_tiny`` or ``efficientnet_b0`` just works.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import timm
from torch import nn

from brainmri.config import ModelConfig
from brainmri.errors import ConfigError
from brainmri.models.cnn import STUDY_CNNS, StudyCNN
from brainmri.weights import load_state_dict_file

log = logging.getLogger(__name__)

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make ``factory(num_classes, in_chans, image_size, cfg)`` available by name."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_models() -> list[str]:
    """The registered names (timm's models are available besides these)."""
    return sorted(_REGISTRY)


def _study_factory(name: str) -> ModelFactory:
    spec = STUDY_CNNS[name]

    def factory(num_classes: int, in_chans: int, image_size: int, cfg: ModelConfig) -> nn.Module:
        if cfg.pretrained or cfg.pretrained_file:
            raise ConfigError(f"model.name={name} has no pretrained weights; unset model.pretrained(_file)")
        return StudyCNN(
            list(cfg.widths) if cfg.widths else spec.widths,
            cfg.fc or spec.fc,
            num_classes=num_classes,
            in_chans=in_chans,
            dropout=spec.dropout if cfg.dropout is None else cfg.dropout,
            input_size=image_size,
            batch_norm=cfg.batch_norm,
            global_pool=cfg.global_pool,
        )

    return factory


for _name in STUDY_CNNS:
    register_model(_name)(_study_factory(_name))


def create_timm_model(num_classes: int, in_chans: int, cfg: ModelConfig) -> nn.Module:
    """A timm model, with pretrained weights from timm's hub or from a local file.

    Compute nodes rarely have internet, hence ``pretrained_file``: read with
    :func:`brainmri.weights.load_state_dict_file` (no pickled code runs) and passed to timm
    through ``pretrained_cfg_overlay``, which still adapts the first conv for
    ``in_chans=1`` and re-initialises the classifier for the 4 classes.
    """
    if cfg.batch_norm or cfg.global_pool or cfg.widths or cfg.fc:
        raise ConfigError("model.batch_norm, global_pool, widths and fc apply to the study CNNs only")
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans}
    if cfg.dropout is not None:
        kwargs["drop_rate"] = cfg.dropout
    pretrained = cfg.pretrained or bool(cfg.pretrained_file)
    if cfg.pretrained_file:
        path = Path(cfg.pretrained_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.pretrained_file does not exist: {path}")
        # Read here, safely (no pickled code runs), and handed to timm as a state dict.
        kwargs["pretrained_cfg_overlay"] = {"state_dict": load_state_dict_file(path)}
    return timm.create_model(cfg.name, pretrained=pretrained, **kwargs)


def check_pretrained_source(cfg: ModelConfig, timeout: float = 5.0) -> Optional[str]:
    """Raise one line before any data is read when ``model.pretrained`` cannot be honoured:
    the weights are not in this node's Hugging Face cache and the hub cannot be reached
    (compute nodes often have no internet). Returns where the weights will come from."""
    if not cfg.pretrained or cfg.pretrained_file or cfg.name in _REGISTRY or not timm.is_model(cfg.name):
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    hub_id = getattr(timm.models.get_pretrained_cfg(cfg.name), "hf_hub_id", None)
    if hub_id is None:
        return None  # weights from a plain URL: timm's own cache and error apply
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(hub_id, filename)
        if isinstance(cached, str):
            return f"Hugging Face cache ({cached})"
    if not constants.HF_HUB_OFFLINE:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(
                urllib.request.Request(f"{constants.ENDPOINT}/api/models/{hub_id}", method="HEAD"), timeout=timeout
            )
            return f"the Hugging Face hub ({hub_id})"
        except (urllib.error.URLError, OSError):
            pass
    raise ConfigError(
        f"model.pretrained=true: {cfg.name}'s weights ({hub_id}) are not in this node's Hugging Face cache and the hub "
        f"cannot be reached; give model.pretrained_file=/path/to/{cfg.name}.safetensors or set model.pretrained=false"
    )


def build_model(cfg: ModelConfig, in_chans: int, image_size: int, num_classes: int = 4) -> nn.Module:
    """The network named by ``cfg.name`` for ``in_chans`` x ``image_size``^2 inputs."""
    if cfg.name in _REGISTRY:
        return _REGISTRY[cfg.name](num_classes, in_chans, image_size, cfg)
    if timm.is_model(cfg.name):
        return create_timm_model(num_classes, in_chans, cfg)
    import difflib

    hint = difflib.get_close_matches(cfg.name, list_models() + timm.list_models(), n=1)
    suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
    raise ConfigError(f"model.name={cfg.name!r} is neither registered nor a timm model{suggestion}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

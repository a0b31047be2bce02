"""ONNX: a trained model exported with its preprocessing documented and checked against PyTorch
(``launch/export.py``), and an exported model read back as a predictor (``predict.py x.onnx``).

The graph takes the normalized image batch ``image`` (float32, N x channels x size x size,
any N) and gives ``logits`` (the TTA-averaged logits) and ``probabilities`` (softmax of the
logits divided by the run's temperature: the calibrated probabilities ``predict.py`` writes).
How to make ``image`` from a slice is in the model's ``metadata_props``: size, channels,
mean/std, class names, TTA and temperature, and ``brainmri.inference``, the whole
:class:`~brainmri.records.InferenceSpec` as JSON.

The export refuses a model that ONNX Runtime does not reproduce: on a sample of the run's
test images, every probability must match PyTorch's (fp32, on the CPU) within
:data:`PARITY_TOLERANCE` and every image must get the same class. Only then is the file
renamed into place.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from brainmri.data.scan import load_image
from brainmri.data.transforms import build_eval_transform
from brainmri.errors import CheckpointError, require
from brainmri.evaluation.trained import TrainedModel, resolve_tta
from brainmri.records import DatasetInfo, InferenceSpec
from brainmri.rundir import atomic_replace
from brainmri.scoring.tta import tta_logits
from brainmri.weights import inference_spec

log = logging.getLogger(__name__)

OPSET = 18
PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 32
SPEC_KEY = "brainmri.inference"
PER_IMAGE_STEP = {  # brainmri.data.intensity's per-image steps, for a reader without brainmri
    "zscore": "z-score each image over its foreground (pixels above min + 0.1 * (max - min)); ",
    "percentile": "map each image's 1st and 99th percentiles to 0 and 1, clipped; ",
    "rank": "replace each pixel by its mid-rank in the image (4,096 bins between its min and max), in (0, 1); ",
}


class Exported(nn.Module):
    """The trained network with its TTA and temperature, as the ONNX graph computes it."""

    def __init__(self, model: nn.Module, tta: str, temperature: float):
        super().__init__()
        self.model, self.tta, self.temperature = model, tta, temperature

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = tta_logits(self.model, image, self.tta)
        return logits, (logits / self.temperature).softmax(dim=1)


def spec_of(trained: TrainedModel) -> InferenceSpec:
    """The trained model's :class:`InferenceSpec`, with the temperature it applies."""
    info = DatasetInfo(trained.class_names, {}, trained.image_size, trained.channels, trained.mean, trained.std)
    spec = inference_spec(trained.cfg, info, trained.normalize)
    cal = trained.calibration
    if cal is None:
        return spec
    return replace(
        spec, temperature=cal.temperature, temperature_fitted_on=cal.fitted_on, temperature_source=cal.source
    )


def metadata_props(spec: InferenceSpec) -> dict[str, str]:
    """The ONNX model's documented preprocessing and outputs (``metadata_props``)."""
    return {
        SPEC_KEY: json.dumps(spec.to_json()),
        "class_names": ",".join(spec.class_names),
        "image_size": str(spec.image_size),
        "channels": str(spec.channels),
        "mean": ",".join(repr(float(m)) for m in spec.mean),
        "std": ",".join(repr(float(s)) for s in spec.std),
        "tta": spec.tta,
        "temperature": "none" if spec.temperature is None else repr(float(spec.temperature)),
        "normalize": spec.normalize or "fixed",
        "preprocessing": (
            f"decode the slice as 8-bit {'grayscale' if spec.channels == 1 else 'RGB'}; resize to "
            f"{spec.image_size}x{spec.image_size} (bilinear, antialiased); divide by 255; "
            + (PER_IMAGE_STEP.get(spec.normalize or "", ""))
            + "subtract mean and divide by std per channel; stack as float32 NCHW"
        ),
        "outputs": (
            f"logits: ({spec.tta} TTA) N x {len(spec.class_names)} in class_names order; probabilities: "
            "softmax(logits / temperature), the temperature already applied inside the graph"
        ),
    }


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime against PyTorch on the same images."""

    images: int
    max_abs_diff: float
    disagreements: int  # images whose most likely class differs

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= PARITY_TOLERANCE and self.disagreements == 0


def onnx_session(path: Path):
    ort = require("onnxruntime", "onnx", "running an ONNX model")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"cannot load {path} as an ONNX model: {str(e).strip().splitlines()[0]}") from None


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check_parity(path: Path, reference: nn.Module, images: torch.Tensor) -> Parity:
    """Compare the ONNX model at ``path`` with ``reference`` (an :class:`Exported`) on ``images``:
    the calibrated probabilities, and the softmax of the logits too (a high temperature flattens
    the calibrated ones, which would hide a difference)."""
    with torch.no_grad():
        logits, probs = (t.numpy() for t in reference(images))
    got_logits, got = onnx_session(path).run(["logits", "probabilities"], {"image": images.numpy()})
    diff = max(np.abs(got - probs).max(), np.abs(_softmax(got_logits) - _softmax(logits)).max())
    return Parity(len(images), float(diff), int((got.argmax(1) != probs.argmax(1)).sum()))


def sample_images(trained: TrainedModel, paths: Sequence[Path], count: int = PARITY_IMAGES) -> torch.Tensor:
    """Up to ``count`` of ``paths``, evenly spread, as the model's normalized input batch."""
    chosen = [paths[int(i)] for i in np.unique(np.linspace(0, len(paths) - 1, min(count, len(paths))).round())]
    transform = trained.transform()
    return torch.stack([transform(load_image(p, trained.channels)) for p in chosen])


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    parity: Parity
    seconds: float


def export_onnx(
    trained: TrainedModel, out: Path, images: torch.Tensor, tta: str = "auto", opset: int = OPSET
) -> ExportResult:
    """Write ``out`` (.onnx): dynamic batch, the spec in its metadata, checked on ``images``
    (normalized, a sample of the run's test images) before it is renamed into place."""
    require("onnxscript", "onnx", "exporting to ONNX")
    onnx = require("onnx", "onnx", "exporting to ONNX")
    started = time.perf_counter()
    spec = replace(spec_of(trained), tta=resolve_tta(trained, tta))
    reference = Exported(trained.model.float().cpu().eval(), spec.tta, spec.temperature or 1.0).eval()
    tmp = out.with_name(f".{out.name}.tmp")
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        reference,
        (images[:2],),
        None,
        input_names=["image"],
        output_names=["logits", "probabilities"],
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    program.save(str(tmp))
    model = onnx.load(str(tmp))
    onnx.helper.set_model_props(model, metadata_props(spec))
    onnx.save(model, str(tmp))
    parity = check_parity(tmp, reference, images)
    if not parity.passed:
        tmp.unlink()
        raise CheckpointError(refusal(out, parity))
    atomic_replace(tmp, out)
    return ExportResult(out, opset, parity, time.perf_counter() - started)


def export_run(
    run: Optional[str], checkpoint: Optional[str], out: Optional[Path], data_root: Optional[str], tta: str = "auto"
) -> ExportResult:
    """``launch/export.py``: the run's model (or a weights file's) to ``out`` (default: the
    weights' name with ``.onnx``, beside them), checked on the run's test images."""
    from brainmri.evaluation.trained import load_trained, split_samples

    trained = load_trained(run, checkpoint, torch.device("cpu"))
    out = Path(out) if out is not None else trained.weights.with_suffix(".onnx")
    if out.suffix != ".onnx":
        raise CheckpointError(f"--out {out}: an ONNX model's name ends in .onnx")
    splits = split_samples(trained, data_root, "test")
    paths = [splits.root / s.path for s in splits.test or []]
    if not paths:
        raise CheckpointError(f"no test images in {splits.root} for the parity check")
    return export_onnx(trained, out, sample_images(trained, paths), tta)


def refusal(path: Path, parity: Parity) -> str:
    return (
        f"refusing to write {path}: ONNX Runtime does not reproduce PyTorch on {parity.images} test images "
        f"(max |p_onnx - p_torch| {parity.max_abs_diff:.2e}, tolerance {PARITY_TOLERANCE:.0e}; "
        f"{parity.disagreements} image(s) change class)"
    )


@dataclass
class OnnxModel:
    """An exported model as ``predict.py`` uses it: its spec, its preprocessing, its session."""

    session: Any
    spec: InferenceSpec
    weights: Path
    run_dir: Optional[Path] = None

    @property
    def name(self) -> str:
        return f"{self.spec.model} (ONNX)"

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    @property
    def channels(self) -> int:
        return self.spec.channels

    @property
    def temperature(self) -> Optional[float]:
        return self.spec.temperature

    def transform(self):
        return build_eval_transform(self.spec.image_size, self.spec.mean, self.spec.std, self.spec.normalize)

    def temperature_note(self) -> str:
        if self.spec.temperature is None:
            return f"uncalibrated: {self.weights.name} was exported from a run without a temperature"
        fitted = self.spec.temperature_fitted_on
        where = "the CV folds' out-of-fold predictions" if fitted == "cv" else f"the {fitted} split"
        return f"temperature {self.spec.temperature:.3f} (fitted on {where}; applied inside {self.weights.name})"

    def probabilities(self, images: torch.Tensor, tta: str) -> torch.Tensor:
        if tta not in ("auto", self.spec.tta):
            raise CheckpointError(
                f"{self.weights.name} computes tta={self.spec.tta} in its graph; tta={tta} needs the weights"
            )
        return torch.from_numpy(self.session.run(["probabilities"], {"image": images.numpy()})[0])


def load_onnx(path: Path) -> OnnxModel:
    """An exported model, its spec read from its metadata (refusing ONNX files brainmri did not write)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ONNX model not found: {path}")
    session = onnx_session(path)
    props = session.get_modelmeta().custom_metadata_map
    if SPEC_KEY not in props:
        raise CheckpointError(f"{path} has no {SPEC_KEY} metadata: export it with launch/export.py")
    return OnnxModel(session, InferenceSpec.from_json(json.loads(props[SPEC_KEY])), path)

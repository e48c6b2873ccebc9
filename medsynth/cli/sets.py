"""Synthetic sets: generate (sharded over processes), merge, curate, match, and split for real folders."""

from __future__ import annotations

import json
from pathlib import Path

from ..domains import DOMAINS
from ..errors import MedsynthError
from .common import positive_int


def _add_generate(sub) -> None:
    from ..recipes import SAMPLERS, START_LOG_SNR, STARTS

    p = sub.add_parser(
        "generate",
        help="sample synthetic images from a diffusion checkpoint",
        description="Write PNGs sampled from a class-conditional diffusion checkpoint. Image i uses seed SEED+i, "
        "so the same command writes the same files. --n-per-class writes a labelled OUT/<class>/ dataset.",
    )
    p.add_argument("--checkpoint", required=True, help="diffusion pipeline folder (model_index.json, unet/, scheduler/)")
    p.add_argument("--class", dest="cls", default=None, help="class name to generate (see the checkpoint's classes)")
    p.add_argument("--n", type=positive_int, default=8, help="number of images of --class (default %(default)s)")
    p.add_argument("--n-per-class", type=positive_int, default=None,
                   help="instead: this many images of every class into OUT/<class>/ (a synthetic dataset)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default="dpmpp", help="(default %(default)s)")
    p.add_argument("--steps", type=int, default=20,
                   help="denoising steps laid over the full 1000-step schedule; those below --start-log-snr, where the "
                        "network cannot estimate the image, are skipped, so 20 run 17 and 25 run 22 "
                        "(default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image (default %(default)s)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale; 1 = none (default %(default)s)")
    p.add_argument("--start-log-snr", type=float, default=START_LOG_SNR,
                   help="the noisiest log-SNR sampling starts at, in [-12, 0]; lower starts earlier, from more noise, "
                        "and leaves more of each image's coarse layout to the network (default %(default)s: t = 858 "
                        "of the cosine schedule)")
    p.add_argument("--start-from", choices=list(STARTS), default="mean",
                   help="what lies under the starting noise: the class's mean colour, or a coarse 8x8 layout drawn "
                        "from a Gaussian fitted to its training images (the checkpoint's start_prior.safetensors; "
                        "add one with 'medsynth start-prior'), which varies the samples' layout as real images "
                        "vary (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass (default %(default)s)")
    g = p.add_argument_group("second stage (the cascade's upsampler)")
    g.add_argument("--resolution", type=positive_int, default=None,
                   help="output size in px: the base generator's (e.g. 64) writes its images alone; the upsampler's "
                        "(e.g. 128) adds the second stage (default: the upsampler's size when the checkpoint names one "
                        "in cascade.json or --upsampler is given, else the generator's)")
    g.add_argument("--upsampler", default=None, metavar="CHECKPOINT",
                   help="upsampler checkpoint to use instead of the one the diffusion checkpoint names")
    g.add_argument("--upsample-steps", type=positive_int, default=None,
                   help="second-stage denoising steps (default: the upsampler's recommended number)")
    g.add_argument("--upsample-noise", type=int, default=None, metavar="LEVEL",
                   help="conditioning noise level 0..999 added to the base image before the second stage "
                        "(default: the upsampler's recommended level)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="(default %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="last line: {n, seconds, images_per_second, files, resolution[, upsampler]}")
    p.set_defaults(func=_cmd_generate)


def resolve_stage(args, pipe, device):
    """The second stage a generate run uses (an UpsamplerPipeline and its path), or (None, None)."""
    from ..upsampler import check_cascade, load_upsampler, named_upsampler

    base = int(pipe.unet.config.sample_size)
    path = args.upsampler or named_upsampler(args.checkpoint)
    if args.resolution == base or (args.resolution is None and path is None):
        if args.upsampler:
            raise MedsynthError(f"--upsampler was given, but --resolution {base} is the generator's own size; "
                                "leave out one of them")
        if args.upsample_steps is not None or args.upsample_noise is not None:
            raise MedsynthError("--upsample-steps/--upsample-noise set the second stage, which this run does not use "
                                f"(it writes the generator's {base}-px images)")
        return None, None
    if path is None:
        raise MedsynthError(f"--resolution {args.resolution}: {args.checkpoint} makes {base}-px images and names no "
                            "upsampler (cascade.json); pass --upsampler CHECKPOINT, or --resolution "
                            f"{base}")
    stage = load_upsampler(path, device)
    check_cascade(pipe, stage, path)
    size = base * stage.scale
    if args.resolution is not None and args.resolution != size:
        raise MedsynthError(f"--resolution {args.resolution} is not available: the generator makes {base} px and "
                            f"{path} enlarges them to {size} px; use --resolution {base} or {size}")
    return stage, path


def _cmd_generate(args) -> int:
    from ..atomic import check_writable
    from ..classify import resolve_device
    from ..diffusion import load_pipeline
    from ..synthetic.generate import generate_set, plan_jobs

    if args.steps < 1:
        raise MedsynthError(f"--steps must be at least 1, got {args.steps}")
    check_writable(args.out, need_mb=10, option="--out")
    device = resolve_device(args.device)
    pipe = load_pipeline(args.checkpoint, device)
    jobs = plan_jobs(pipe.classes, cls=args.cls, n=args.n, n_per_class=args.n_per_class, seed=args.seed)
    if args.upsample_noise is not None and not 0 <= args.upsample_noise < 1000:
        raise MedsynthError(f"--upsample-noise must be a level in 0..999, got {args.upsample_noise}")
    stage, stage_path = resolve_stage(args, pipe, device)
    upsample = {k: v for k, v in (("num_inference_steps", args.upsample_steps),
                                  ("noise_level", args.upsample_noise)) if v is not None}
    summary = generate_set(pipe, jobs, args.out, checkpoint=args.checkpoint, sampler=args.sampler, steps=args.steps,
                           guidance=args.guidance, batch_size=args.batch_size, start_log_snr=args.start_log_snr,
                           start_from=args.start_from, labelled=args.n_per_class is not None, seed=args.seed,
                           n_per_class=args.n_per_class, cpu=args.device == "cpu", progress=not args.json,
                           upsampler=stage, upsample=upsample, upsampler_path=stage_path)
    if summary is None:  # another process of a sharded run: the first one reports
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        stage = f", enlarged by {stage_path}" if stage is not None else ""
        print(f"wrote {summary['n']} {summary['resolution']}-px images to {args.out} in {summary['seconds']:.1f} s "
              f"({summary['images_per_second']:.2f} images/s{stage})")
    return 0


def _add_upsample(sub) -> None:
    p = sub.add_parser(
        "upsample",
        help="enlarge existing images with the cascade's second stage (e.g. 64 -> 128 px)",
        description="Enlarge images with an upsampler checkpoint (train-upsampler). Each IN is an image file or a "
        "folder; a folder of <class>/ sub-folders keeps that layout in OUT, and a synthetic set's generation.json "
        "gains the stage's record, so the result is a labelled 128-px set for train-classifier or tstr. Image i "
        "takes seed SEED+i, or the seed that generate's labels.csv gives it, so the same command writes the same files.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders")
    p.add_argument("--checkpoint", required=True, help="upsampler checkpoint folder, e.g. checkpoints/brain_mri/upsampler")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: the checkpoint's)")
    p.add_argument("--noise", type=int, default=None, metavar="LEVEL",
                   help="conditioning noise level 0..999 added to each input first (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="(default %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="last line: {n, seconds, images_per_second, files, resolution, upsampler}")
    p.set_defaults(func=_cmd_upsample)


def _cmd_upsample(args) -> int:
    from ..atomic import check_writable
    from ..classify import resolve_device
    from ..synthetic.upsample import upsample_files
    from ..upsampler import load_upsampler

    if args.noise is not None and not 0 <= args.noise < 1000:
        raise MedsynthError(f"--noise must be a level in 0..999, got {args.noise}")
    check_writable(args.out, need_mb=10, option="--out")
    stage = load_upsampler(args.checkpoint, resolve_device(args.device))
    summary = upsample_files(stage, args.inputs, args.out, stage_path=args.checkpoint, seed=args.seed,
                             steps=args.steps, noise_level=args.noise, batch_size=args.batch_size,
                             progress=not args.json)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {summary['n']} images enlarged to {summary['resolution']} px to {args.out} in "
              f"{summary['seconds']:.1f} s")
    return 0


def _add_merge(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="join synthetic sets from several 'generate --n-per-class' runs into one training set",
        description="Join labelled synthetic folders written by 'generate --n-per-class' (another guidance scale, "
        "checkpoint or seed range each) into one training folder. Images are hard-linked, not copied (copied only "
        "across file systems), under a per-set prefix (a_, b_, ...); generation.json lists each set's record under "
        "'parts', which train-classifier puts on the model card. All sets must share domain, classes and resolution.",
    )
    p.add_argument("sets", nargs="+", metavar="SET", help="synthetic set folders (at least two)")
    p.add_argument("--out", required=True, help="new folder for the joined set")
    p.add_argument("--note", default=None, help="a sentence for the model card, e.g. why these sets were joined")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="last line: the joined set's generation.json record")
    p.set_defaults(func=_cmd_merge)


def _cmd_merge(args) -> int:
    from ..synthetic.merge import merge_sets

    record = merge_sets(args.sets, args.out, note=args.note, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(record))
    else:
        counts = ", ".join(f"{c} {n}" for c, n in record["class_counts"].items())
        print(f"joined {len(record['parts'])} draws into {args.out}: {sum(record['class_counts'].values())} images "
              f"({counts})")
    return 0


def _add_curate(sub) -> None:
    p = sub.add_parser(
        "curate",
        help="keep the synthetic images that a CNN trained on real images assigns to their class",
        description="Filter a labelled synthetic folder (from 'generate --n-per-class' or 'merge'): keep an image "
        "only if CLASSIFIER, a CNN trained on real images, ranks its generated class first (and, with --min-prob, "
        "gives it at least that probability). Nothing is relabelled. Images are hard-linked under their names; "
        "labels.csv gains each image's probability, and generation.json a 'curation' record that train-classifier "
        "puts on the model card. Train the filter on the diffusion model's real training images, never on the "
        "images the result will be judged on.",
    )
    p.add_argument("set", metavar="SET", help="synthetic set folder (with generation.json)")
    p.add_argument("--classifier", required=True, help="classifier checkpoint trained on real images of the domain")
    p.add_argument("--out", required=True, help="new folder for the curated set")
    p.add_argument("--min-prob", type=float, default=0.0,
                   help="also require at least this probability for the generated class (default 0: ranked first)")
    p.add_argument("--batch-size", type=int, default=64, help="images per classifier batch (default 64)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="last line: the curated set's generation.json record")
    p.set_defaults(func=_cmd_curate)


def _cmd_curate(args) -> int:
    from ..synthetic.curate import curate_set

    if args.batch_size < 1:
        raise MedsynthError(f"--batch-size must be at least 1, got {args.batch_size}")
    record = curate_set(args.set, args.classifier, args.out, min_prob=args.min_prob, overwrite=args.overwrite,
                        batch_size=args.batch_size)
    if args.json:
        print(json.dumps(record))
    else:
        cur = record["curation"]
        kept = ", ".join(f"{c} {cur['kept'][c]} of {cur['offered'][c]}" for c in record["classes"])
        print(f"kept {sum(cur['kept'].values())} of {sum(cur['offered'].values())} images in {args.out} ({kept})")
    return 0


def _add_match(sub) -> None:
    p = sub.add_parser(
        "match",
        help="weight a synthetic set towards real images: extra copies of the samples real images lie near",
        description="Keep every image of a labelled synthetic folder once and add extra copies (hard links named "
        "m<j>_<name>) of the samples that real images of the same class lie near: each real image gives 1/K to "
        "each of its K nearest synthetic samples (ImageNet EfficientNet-Lite0 features), and each class gets "
        "EXTRA times its size in copies, in proportion. No real image is copied or trained on; generation.json "
        "gains a 'matching' record that train-classifier puts on the model card. Use the real images the "
        "diffusion model trained on, never the images the result will be judged on.",
    )
    p.add_argument("set", metavar="SET", help="synthetic set folder (with generation.json), e.g. a curated one")
    p.add_argument("--real", required=True, help="real images, one sub-folder per class")
    p.add_argument("--out", required=True, help="new folder for the weighted set")
    p.add_argument("--k", type=int, default=10, help="nearest synthetic samples each real image weights (default 10)")
    p.add_argument("--extra", type=float, default=1.0,
                   help="extra copies per class, as a multiple of its size (default 1: twice the images)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="last line: the weighted set's generation.json record")
    p.set_defaults(func=_cmd_match)


def _cmd_match(args) -> int:
    from ..synthetic.match import match_set

    record = match_set(args.set, args.real, args.out, k=args.k, extra=args.extra, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(record))
    else:
        per = record["matching"]["per_class"]
        done = ", ".join(f"{c} {per[c]['samples']} + {per[c]['extra_copies']} copies of {per[c]['samples_with_copies']}"
                         for c in record["classes"])
        print(f"wrote {sum(record['class_counts'].values())} images to {args.out} ({done})")
    return 0


def _add_split(sub) -> None:
    p = sub.add_parser(
        "split",
        help="split a labelled folder into OUT/train and OUT/val",
        description="Deterministic, class-stratified split of DATA/<class>/ into OUT/train/<class>/ and "
        "OUT/val/<class>/ (hard links where possible, else copies). Train on one, evaluate on the other.",
    )
    p.add_argument("--domain", required=True, choices=sorted(DOMAINS))
    p.add_argument("--data", required=True, help="folder with one sub-folder per class")
    p.add_argument("--out", required=True, help="new folder to create")
    p.add_argument("--val-fraction", type=float, default=0.2, help="(default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    p.set_defaults(func=_cmd_split)


def _cmd_split(args) -> int:
    from ..data import link_or_copy, scan_dataset, stratified_split
    from ..domains import get_domain

    domain = get_domain(args.domain)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise MedsynthError(f"{out} exists and is not empty; choose a new --out")
    train, val = stratified_split(scan_dataset(args.data, domain.classes), args.val_fraction, args.seed)
    for part, samples in (("train", train), ("val", val)):
        for s in samples:
            target = out / part / domain.classes[s.label] / s.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(s.path, target)
    print(f"wrote {out}/train ({len(train)} images) and {out}/val ({len(val)} images)")
    return 0


def register(sub) -> None:
    """Add this group's commands to the ``medsynth`` sub-command parser."""
    _add_generate(sub)
    _add_upsample(sub)
    _add_merge(sub)
    _add_curate(sub)
    _add_match(sub)
    _add_split(sub)

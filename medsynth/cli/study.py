"""The study: quality, audit, tstr."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..domains import DOMAINS
from ..errors import MedsynthError
from .common import csv_of, positive_int


def _add_quality(sub) -> None:
    p = sub.add_parser(
        "quality",
        help="FD-Lite0 of a synthetic dataset against real images (and a real-trained CNN's accuracy on it)",
        description="Image quality of a labelled synthetic folder (from 'generate --n-per-class') against real "
        "images the generator was not trained on: the Frechet distance of ImageNet EfficientNet-Lite0 features "
        "(FD-Lite0), overall and per class, with a real-vs-real reference and, optionally, how often a CNN trained "
        "on real images recognises each synthetic image's class. --card writes the numbers into a model card.",
    )
    p.add_argument("--synthetic", required=True, help="folder with one sub-folder per class of synthetic images")
    p.add_argument("--real", required=True, help="folder with one sub-folder per class of real held-out images")
    p.add_argument("--reference", default=None,
                   help="real training images: scores a perfect copy of the training data at the same N")
    p.add_argument("--classifier", default=None, help="classifier checkpoint trained on real images")
    p.add_argument("--domain", choices=sorted(DOMAINS), default=None,
                   help="(default: from the synthetic folder's generation.json)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="compare at this resolution (default: the generator's, from generation.json)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference subset (default %(default)s)")
    p.add_argument("--card", default=None,
                   help="checkpoint folder: write quality.json there and the numbers into its README.md")
    p.add_argument("--json", action="store_true", help="last line: the result as one JSON object")
    p.set_defaults(func=_cmd_quality)


def _cmd_quality(args) -> int:
    from .. import atomic
    from ..domains import get_domain
    from ..quality import measure_quality, quality_markdown, update_card
    from ..synthetic.provenance import read_provenance

    for name in ("synthetic", "real", "reference", "classifier", "card"):
        value = getattr(args, name)
        if value is not None and not Path(value).is_dir():
            raise MedsynthError(f"--{name} {value}: no such folder")
    generation = read_provenance(args.synthetic)
    key = args.domain or (generation or {}).get("diffusion_domain")
    if not key:
        raise MedsynthError(f"{args.synthetic} has no generation.json naming its domain: give --domain")
    domain = get_domain(key)
    size = args.size or (generation or {}).get("resolution") or domain.diffusion_size
    result = measure_quality(args.synthetic, args.real, domain.classes, domain.channels, size,
                             reference=args.reference, classifier=args.classifier, seed=args.seed)
    result.update(domain=domain.key, synthetic=args.synthetic, real=args.real, reference=args.reference,
                  generation=generation)
    section = quality_markdown(result, args.synthetic, args.real, args.reference, generation)
    if args.card:
        atomic.write_json(Path(args.card) / "quality.json", result)
        update_card(Path(args.card) / "README.md", section)
    if args.json:
        print(json.dumps(result))
    else:
        print(section)
    return 0


def _add_audit(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="fidelity, coverage and memorization audit of a synthetic set, per class, with error bars",
        description="Audit a labelled synthetic folder (from 'generate --n-per-class') against the real images its "
        "generator learned from (--train) and real images it never saw (--test): Frechet distance and KID with a "
        "real-vs-real reference at the same N; precision, recall, density and coverage (k = 5); and, in every "
        "feature space and in pixel space, each image's nearest training image, the share of synthetic images "
        "closer to one than held-out real images are, a Mann-Whitney (C_T) test and a per-class verdict on "
        "copying. Writes OUT/audit.json, OUT/report.md, per-image CSVs and PNG figures; features are cached in OUT.",
    )
    p.add_argument("--synthetic", required=True, help="synthetic set: one sub-folder per class")
    p.add_argument("--train", required=True, help="the real images the generator was trained on (one sub-folder per class)")
    p.add_argument("--test", required=True, help="real images the generator never saw (one sub-folder per class)")
    p.add_argument("--out", required=True, help="folder for the report (created; a rerun reuses its feature cache)")
    p.add_argument("--features", action="append", default=None, metavar="SPEC",
                   help="feature space: lite0 (ImageNet EfficientNet-Lite0), classifier:CHECKPOINT (penultimate layer "
                        "of a medsynth classifier, e.g. checkpoints/brain_mri/classifier) or file:WEIGHTS[@TIMM_ARCH] "
                        "(a safetensors Inception-v3 or DINOv2, or any timm model named after @); repeat the option "
                        "or separate with commas (default: lite0)")
    p.add_argument("--domain", choices=sorted(DOMAINS), default=None,
                   help="(default: from the synthetic folder's generation.json)")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="compare at this resolution (default: the generator's, from generation.json)")
    p.add_argument("--n-max", type=positive_int, default=None,
                   help="at most this many images per folder, a seeded pick that keeps each class's share")
    p.add_argument("--seed", type=int, default=0, help="seed of every subset and bootstrap (default %(default)s)")
    p.add_argument("--card", default=None, help="checkpoint folder: add the audit's summary to its README.md "
                                                "(and audit.json beside it)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="(default %(default)s)")
    p.add_argument("--json", action="store_true", help="last line: audit.json as one JSON object")
    p.set_defaults(func=_cmd_audit)


def _cmd_audit(args) -> int:
    from ..audit import run_audit, update_card, verdict_lines
    from ..classify import resolve_device

    specs = [s.strip() for spec in (args.features or ["lite0"]) for s in spec.split(",") if s.strip()]
    if args.card is not None and not Path(args.card).is_dir():
        raise MedsynthError(f"--card {args.card}: no such checkpoint folder")
    result = run_audit(args.synthetic, args.train, args.test, args.out, features=specs, domain=args.domain,
                       resolution=args.resolution, n_max=args.n_max, seed=args.seed,
                       device=str(resolve_device(args.device)),
                       log=(lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr)))
    if args.card:
        update_card(args.card, result, args.out)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {Path(args.out) / 'report.md'} in {result['seconds']:.0f} s")
        print("\n".join(verdict_lines(result)))
    return 0


def _add_tstr(sub) -> None:
    from ..recipes import SAMPLERS, STARTS
    from ..tstr import PRESETS, TRAIN_SETS, TSTRConfig

    d = TSTRConfig.__dataclass_fields__
    p = sub.add_parser(
        "tstr",
        help="the study's experiment: CNNs trained on synthetic, real and mixed images, tested on real scans",
        description="Train on synthetic, test on real. For every architecture, seed and fraction of the real "
        "training images, trains a CNN on real images only, on synthetic images only and on both (the "
        "train-classifier recipe; epochs selected on real images drawn from --real-train), scores each on "
        "--real-test, and writes RUN/report.md, results.csv/json, summary.json, figures and the synthetic set's "
        "audit. Each cell is a sub-run written atomically: rerunning the same command skips finished cells. Under "
        "'accelerate launch' or torchrun the cells are shared out across processes.",
    )
    p.add_argument("--domain", required=True, choices=sorted(DOMAINS))
    p.add_argument("--real-train", help="real training images, one sub-folder per class")
    p.add_argument("--real-test", help="real test images, one sub-folder per class (never trained on)")
    p.add_argument("--out", required=True, help="run folder (created; rerun the same command to resume)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--diffusion", help="diffusion checkpoint to draw the synthetic set from (once, into RUN/synthetic)")
    src.add_argument("--synthetic", help="an existing synthetic set (with its generation.json) instead")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="architectures: cpu = " + ",".join(PRESETS["cpu"]) + "; study = the study's eight "
                        "families (random init where no ImageNet weights are installed) (default %(default)s)")
    p.add_argument("--archs", type=csv_of(str, "timm names"), default=None, help="comma-separated timm names (instead of --preset)")
    p.add_argument("--train-sets", type=csv_of(str, "training sets"), default=TRAIN_SETS,
                   help="comma-separated, from " + ",".join(TRAIN_SETS) + " (default: all)")
    p.add_argument("--fractions", type=csv_of(float, "fractions"), default=d["fractions"].default,
                   help="fractions of the real training images, e.g. 1.0,0.25,0.1: the data-scarcity curve (default 1.0)")
    p.add_argument("--seeds", type=csv_of(int, "integers"), default=d["seeds"].default, help="e.g. 0,1,2 (default 0)")
    p.add_argument("--epochs", type=positive_int, default=d["epochs"].default, help="(default %(default)s)")
    p.add_argument("--min-steps", type=int, default=0,
                   help="at least this many optimiser steps per cell: smaller training sets get more epochs, so the "
                        "scarcity curve compares data rather than training length (default 0: off)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="CNN input size (default: the synthetic set's resolution, for every training set)")
    p.add_argument("--batch-size", type=positive_int, default=d["batch_size"].default, help="(default %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"].default, help="(default %(default)s)")
    p.add_argument("--select-fraction", type=float, default=d["select_fraction"].default,
                   help="share of --real-train per class kept to select each cell's epoch (default %(default)s)")
    p.add_argument("--synthetic-per-class", type=positive_int, default=d["synthetic_per_class"].default,
                   help="with --diffusion: images per class to draw (default %(default)s)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=d["sampler"].default, help="(default %(default)s)")
    p.add_argument("--steps", type=positive_int, default=d["steps"].default, help="(default %(default)s)")
    p.add_argument("--guidance", type=float, default=d["guidance"].default, help="(default %(default)s)")
    p.add_argument("--start-from", choices=list(STARTS), default=d["start_from"].default, help="(default %(default)s)")
    p.add_argument("--synthetic-seed", type=int, default=0, help="seed of the first synthetic image (default 0)")
    p.add_argument("--no-audit", action="store_true", help="skip the synthetic set's audit in the report")
    p.add_argument("--audit-features", type=csv_of(str, "feature specs"), default=("lite0",),
                   help="feature spaces of the audit, as 'audit --features' (default lite0)")
    p.add_argument("--keep-weights", action="store_true", help="keep every cell's model.safetensors (default: deleted)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="(default %(default)s)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new cell after this many minutes; rerun the same command to continue")
    p.add_argument("--protocol", choices=["given", "study"], default="given",
                   help="given: the folders above; study: the paper's protocol, a stratified --study-fraction of "
                        "--data trains a fresh diffusion model (a GPU job) and the rest is the test set "
                        "(default %(default)s)")
    p.add_argument("--data", help="with --protocol study: all real images, one sub-folder per class")
    p.add_argument("--study-fraction", type=float, default=0.2, help="(default %(default)s)")
    p.add_argument("--diffusion-steps", type=positive_int, default=20000,
                   help="with --protocol study: training steps of the fresh diffusion model (default %(default)s)")
    p.add_argument("--diffusion-preset", choices=["auto", "tiny", "cpu", "gpu"], default="auto",
                   help="with --protocol study: model size (auto: gpu on a GPU, else cpu) (default %(default)s)")
    p.add_argument("--json", action="store_true", help="last line: summary.json as one JSON object")
    p.set_defaults(func=_cmd_tstr)


def _cmd_tstr(args) -> int:
    from ..tstr import PRESETS, TSTRConfig, run_tstr

    config = TSTRConfig(
        domain=args.domain, real_train=args.real_train, real_test=args.real_test, out=args.out,
        diffusion=args.diffusion, synthetic=args.synthetic, archs=tuple(args.archs or PRESETS[args.preset]),
        train_sets=tuple(args.train_sets), fractions=tuple(args.fractions), seeds=tuple(args.seeds),
        epochs=args.epochs, min_steps=args.min_steps, image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
        select_fraction=args.select_fraction, synthetic_per_class=args.synthetic_per_class, sampler=args.sampler,
        steps=args.steps, guidance=args.guidance, start_from=args.start_from, synthetic_seed=args.synthetic_seed,
        audit=not args.no_audit, audit_features=tuple(args.audit_features), keep_weights=args.keep_weights,
        device=args.device, max_minutes=args.max_minutes, protocol=args.protocol, data=args.data,
        study_fraction=args.study_fraction, diffusion_steps=args.diffusion_steps,
        diffusion_preset=args.diffusion_preset,
    )
    summary = run_tstr(config, progress=not args.json,
                       log=(lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr)))
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {Path(args.out) / 'report.md'} ({summary['n_finished']} of {summary['n_cells']} cells)")
        for t in summary["table"]:
            se = f" ± {t['accuracy_se']:.3f}" if t["accuracy_se"] is not None else ""
            print(f"  {t['arch']:<24} {t['train_set']:<9} fraction {t['fraction']:<5g} accuracy {t['accuracy']:.3f}{se}")
        if summary.get("stopped"):
            print(summary["stopped"])
    return 0


def register(sub) -> None:
    """Add this group's commands to the ``medsynth`` sub-command parser."""
    _add_quality(sub)
    _add_audit(sub)
    _add_tstr(sub)

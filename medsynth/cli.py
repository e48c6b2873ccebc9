"""``python -m medsynth`` / ``medsynth``: the command-line interface.

A user error (bad option, bad file, unknown class) prints one line, ``medsynth: error: ...``, and
exits with status 2; no traceback. With ``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from .domains import DOMAINS
from .errors import MedsynthError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _is_main_process() -> bool:
    """Under `accelerate launch` every rank runs the command; only rank 0 prints results."""
    return int(os.environ.get("RANK", "0")) == 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_train_classifier(sub) -> None:
    from .recipes import DEFAULT_ARCH
    from .recipes import ClassifierRecipe as R

    p = sub.add_parser(
        "train-classifier",
        help="train a CNN classifier on a <class>/<images> folder",
        description="Train a timm CNN on DATA/<class>/*.{png,jpg,dcm,...}. The best weights by validation "
        "macro-F1 are written to OUT as config.json + model.safetensors + README.md (model card), with "
        "train_log.csv, args.json and split.json. Runs unchanged under 'accelerate launch -m medsynth'.",
    )
    g = p.add_argument_group("data")
    g.add_argument("--domain", required=True, choices=sorted(DOMAINS), help="domain key; fixes class names and channels")
    g.add_argument("--data", required=True, help="folder with one sub-folder per class")
    g.add_argument("--out", required=True, help="output folder for the checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in OUT")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in OUT that was stopped or killed, from its last finished epoch "
                   "(OUT/state/); options left off keep the run's recorded values")
    g.add_argument("--val-fraction", type=float, default=R.val_fraction,
                   help="fraction of each class held out for validation (default %(default)s; 0 = none)")
    g.add_argument("--val-data", default=None, help="separate validation folder instead of a split of DATA")
    g.add_argument("--image-size", type=int, default=None, help="input size in px (default: the domain's, 128)")
    g.add_argument("--source-size", type=int, default=None, metavar="PX",
                   help="pass every image, in training and in use, through this lower resolution before "
                   "--image-size, so a CNN that upsamples 64-px synthetic images to 128 px sees real ones "
                   "with no more detail (default: the generator's resolution when DATA is a synthetic folder "
                   "made at a lower one than --image-size; 0: never)")
    g.add_argument("--num-workers", type=int, default=R.num_workers, help="data-loader worker processes (default %(default)s)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--arch", default=None,
                   help=f"any timm architecture name (default {DEFAULT_ARCH}, or the --init-from checkpoint's)")
    g.add_argument("--no-pretrained", action="store_true", help="start from random weights instead of ImageNet")
    g.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="fine-tune this medsynth classifier checkpoint (same arch and classes) instead")
    g.add_argument("--epochs", type=_positive_int, default=R.epochs, help="maximum epochs (default %(default)s)")
    g.add_argument("--batch-size", type=_positive_int, default=R.batch_size, help="per-device batch size (default %(default)s)")
    g.add_argument("--lr", type=float, default=R.lr, help="peak AdamW learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=R.weight_decay, help="AdamW weight decay (default %(default)s)")
    g.add_argument("--warmup-epochs", type=float, default=R.warmup_epochs, help="linear warm-up length (default %(default)s)")
    g.add_argument("--label-smoothing", type=float, default=R.label_smoothing, help="(default %(default)s)")
    g.add_argument("--balance", choices=["weights", "none"], default=R.balance,
                   help="class-weighted loss against imbalance, or none (default %(default)s)")
    g.add_argument("--augment", choices=["domain", "strong"], default=R.augment,
                   help="the domain's augmentations, or strong: wider affine and intensity ranges plus blur, "
                   "gamma, pixel noise and random erasing, for training on synthetic images (default %(default)s)")
    g.add_argument("--mixup", type=float, default=R.mixup, metavar="ALPHA",
                   help="mix image pairs and their labels with weights from Beta(ALPHA, ALPHA); 0 = off "
                   "(default %(default)s)")
    g.add_argument("--freeze-stages", type=int, default=R.freeze_stages, metavar="N",
                   help="keep the stem and the first N-1 stages of the backbone at their initial weights "
                   "(default %(default)s)")
    g.add_argument("--ema", type=float, default=R.ema, metavar="DECAY",
                   help="validate and keep a moving average of the weights instead of the live weights, updated "
                   "each step with this decay at most (e.g. 0.995; it warms up as (1+t)/(10+t), reaching 0.995 "
                   "after about 1,800 steps); 0 = off (default %(default)s)")
    g.add_argument("--patience", type=int, default=R.patience,
                   help="stop after this many epochs without a better validation macro-F1; 0 = never (default %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=R.seed, help="seed for the split, initialisation and order (default %(default)s)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=R.device, help="(default %(default)s)")
    g.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default=R.mixed_precision,
                   help="auto = bf16/fp16 on a GPU, fp32 on a CPU (default %(default)s)")
    g.add_argument("--max-minutes", type=float, default=None, help="stop after the epoch that passes this wall time")
    g.add_argument("--json", action="store_true", help="print the run summary as one JSON line at the end")
    p.set_defaults(func=_cmd_train_classifier)


def _cmd_train_classifier(args) -> int:
    import shutil

    from .classify import WEIGHTS_NAME
    from .train_classifier import STATE_DIR, ClassifierRecipe, train_classifier, unfinished_epoch

    out = Path(args.out)
    if args.resume and args.overwrite:
        raise MedsynthError("--resume continues the run in OUT and --overwrite starts it again: give one of them")
    stopped = unfinished_epoch(out)
    if not args.resume and not args.overwrite:
        if stopped is not None:
            raise MedsynthError(f"{out} holds a run that stopped after epoch {stopped}; pass --resume to continue it, "
                                "--overwrite to start again, or choose another --out")
        if (out / WEIGHTS_NAME).exists():
            raise MedsynthError(f"{out} already holds a checkpoint; pass --overwrite or choose another --out")
    if args.overwrite and _is_main_process():
        # Stale files of the old run must not describe the new weights if this run dies early.
        for name in (WEIGHTS_NAME, "config.json", "README.md", "train_summary.json", "train_log.csv"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    options = dict(
        domain=args.domain, data=args.data, out=args.out, arch=args.arch, pretrained=not args.no_pretrained,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, balance=args.balance,
        augment=args.augment, mixup=args.mixup, freeze_stages=args.freeze_stages, ema=args.ema,
        image_size=args.image_size, source_size=args.source_size, val_fraction=args.val_fraction, val_data=args.val_data,
        patience=args.patience, seed=args.seed, device=args.device, mixed_precision=args.mixed_precision,
        num_workers=args.num_workers, max_minutes=args.max_minutes, init_from=args.init_from,
        resume=args.resume, progress=not args.json or sys.stderr.isatty(),
    )
    if args.resume:
        options = _keep_recorded_options(args, ClassifierRecipe, options)
    summary = train_classifier(ClassifierRecipe(**options))
    if not _is_main_process():
        return 0
    val = summary["val_metrics"]
    print(f"saved {summary['out']} (best epoch {summary['best_epoch']}/{summary['epochs_run']}, "
          f"{summary['seconds'] / 60:.1f} min)"
          + (f": val accuracy {val['accuracy']:.4f}, macro-F1 {val['macro_f1']:.4f}" if val else ""))
    if args.json:
        print(json.dumps(summary))
    return 0



def _keep_recorded_options(args, recipe_cls, options: dict) -> dict:
    """--resume continues the recorded recipe: an option left off the command line keeps the value the run
    recorded in OUT/args.json (e.g. --save-dtype fp16), not the parser's default; a given option wins."""
    from .recipes import keep_recorded

    saved_file = Path(args.out) / "args.json"
    if not saved_file.is_file():
        return options
    try:
        saved = json.loads(saved_file.read_text())
    except ValueError as exc:
        raise MedsynthError(f"{saved_file} is not valid JSON ({exc}); it records the run's recipe") from None
    given = {token.split("=", 1)[0] for token in getattr(args, "argv", []) if token.startswith("--") and len(token) > 2}
    options, kept = keep_recorded(recipe_cls, options, saved, given)
    if kept and _is_main_process():
        print(f"resuming with the recorded {', '.join(kept)} (give an option to change it)", file=sys.stderr)
    return options

def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a classifier checkpoint on a labelled folder",
        description="Classify every image under DATA/<class>/ and report accuracy, macro-F1, per-class "
        "precision/recall/F1/support and the confusion matrix. Class names and order come from the checkpoint.",
    )
    p.add_argument("--checkpoint", required=True, help="classifier folder (config.json + model.safetensors)")
    p.add_argument("--data", required=True, help="folder with one sub-folder per class; other files are ignored")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object with all metrics")
    p.add_argument("--plot", default=None, metavar="PATH", help="also write a confusion-matrix PNG here")
    p.add_argument("--batch-size", type=_positive_int, default=16,
                   help="images per forward pass; 16 is fastest on small CPUs, raise it on a GPU (default %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="(default %(default)s)")
    p.add_argument("--card", action="store_true",
                   help="also write the result into the checkpoint's model card (an 'Evaluation' section per "
                   "data folder) and evaluation.json")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from .evaluate import evaluate_folder
    from .metrics import plot_confusion_matrix

    result = evaluate_folder(args.checkpoint, args.data, args.batch_size, args.device, progress=not args.json)
    if args.card:
        from .cards import add_evaluation

        add_evaluation(args.checkpoint, args.data, result)
    if args.plot:
        plot_confusion_matrix(result["confusion_matrix"], result["classes"], args.plot,
                              f"{result['domain']}: accuracy {result['accuracy']:.3f}, n={result['n']}")
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['domain']}: n={result['n']}  accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}"
          f"  ({result['seconds']:.1f} s)")
    width = max(len(c) for c in result["classes"])
    print(f"{'class':<{width}}  precision  recall      f1  support")
    for name, m in result["per_class"].items():
        print(f"{name:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}  {m['support']:7d}")
    print("confusion matrix (rows: true, columns: predicted):")
    for name, row in zip(result["classes"], result["confusion_matrix"]):
        print(f"{name:<{width}}  " + " ".join(f"{v:6d}" for v in row))
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _add_classify(sub) -> None:
    p = sub.add_parser("classify", help="class probabilities for image files",
                       description="Print the top class and every class probability for each IMAGE.")
    p.add_argument("--checkpoint", required=True, help="classifier folder (config.json + model.safetensors)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, BMP, TIFF, WebP or DICOM files")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object with all results")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="(default %(default)s)")
    p.set_defaults(func=_cmd_classify)


def _cmd_classify(args) -> int:
    from .classify import load_classifier
    from .evaluate import classify_files

    started = time.time()
    clf = load_classifier(args.checkpoint, args.device)
    results = classify_files(clf, args.images, checkpoint=args.checkpoint)
    if args.json:
        print(json.dumps({"domain": clf.config.domain, "classes": clf.classes, "results": results,
                          "seconds": round(time.time() - started, 3)}))
        return 0
    for r in results:
        probs = "  ".join(f"{c} {p:.3f}" for c, p in r["probabilities"].items())
        flag = "" if r["in_domain"] is not False else "   OUT OF DOMAIN: " + r["out_of_domain"]["note"]
        print(f"{r['file']}: {r['class']} ({r['probability']:.3f})   [{probs}]{flag}")
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
    from .data import link_or_copy, scan_dataset, stratified_split
    from .domains import get_domain

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


def _add_explain(sub) -> None:
    from .recipes import LIME_DEFAULTS, METHODS

    p = sub.add_parser(
        "explain",
        help="LIME or Grad-CAM overlay showing what a classifier looks at",
        description="Explain a classifier's prediction for IMAGE and write the overlay PNG. LIME shows the "
        "superpixels that support (green) or oppose (red) the class; Grad-CAM a heat map with a colour bar.",
    )
    p.add_argument("--checkpoint", required=True, help="classifier folder (config.json + model.safetensors)")
    p.add_argument("image", metavar="IMAGE", help="PNG, JPEG, BMP, TIFF, WebP or DICOM file")
    p.add_argument("--method", choices=list(METHODS), default="lime", help="(default %(default)s)")
    p.add_argument("--out", required=True, help="overlay PNG to write")
    p.add_argument("--target", default=None, help="class to explain (default: the predicted class)")
    p.add_argument("--num-samples", type=int, default=LIME_DEFAULTS["num_samples"],
                   help="LIME: perturbed images (default %(default)s)")
    p.add_argument("--num-features", type=int, default=LIME_DEFAULTS["num_features"],
                   help="LIME: superpixels shown (default %(default)s)")
    p.add_argument("--n-segments", type=int, default=LIME_DEFAULTS["n_segments"],
                   help="LIME: SLIC superpixels (default %(default)s)")
    p.add_argument("--negative", action="store_true", help="LIME: also show regions that oppose the class")
    p.add_argument("--hide-color", type=float, default=None,
                   help="LIME: grey value (0-255) for hidden superpixels (default: each superpixel's mean)")
    p.add_argument("--seed", type=int, default=0, help="LIME: perturbation seed (default %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="(default %(default)s)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object (class, probabilities, seconds, out)")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args) -> int:
    from .classify import load_classifier
    from .explain import explain, save_overlay
    from .io import load_image

    clf = load_classifier(args.checkpoint, args.device)
    image = load_image(args.image, clf.config.channels)
    exp = explain(image, clf, args.method, args.target, num_samples=args.num_samples, num_features=args.num_features,
                  n_segments=args.n_segments, positive_only=not args.negative, hide_color=args.hide_color,
                  seed=args.seed)
    save_overlay(exp, args.out)
    if args.json:
        print(json.dumps({"file": args.image, **exp.summary(), "out": args.out}))
    else:
        print(f"{args.image}: {exp.target_class} ({exp.probability:.3f}); {args.method} overlay written to "
              f"{args.out} in {exp.seconds:.1f} s")
    return 0


def _add_train_diffusion(sub) -> None:
    from .recipes import UNET_PRESETS as PRESETS
    from .recipes import DiffusionRecipe as R

    p = sub.add_parser(
        "train-diffusion",
        help="train a class-conditional diffusion model on a <class>/<images> folder",
        description="Train a class-conditional UNet (DDPM, cosine schedule, Min-SNR-gamma weighting, EMA, "
        "classifier-free-guidance label dropout). OUT becomes a diffusers pipeline folder (model_index.json, "
        "unet/, scheduler/) with loss.csv, samples/step_*.png, a model card and checkpoints/ for --resume. "
        "Runs unchanged under 'accelerate launch -m medsynth'.",
    )
    g = p.add_argument_group("data")
    g.add_argument("--domain", required=True, choices=sorted(DOMAINS), help="domain key; fixes class names and channels")
    g.add_argument("--data", required=True, help="folder with one sub-folder per class")
    g.add_argument("--out", required=True, help="output folder (the pipeline checkpoint)")
    g.add_argument("--val-fraction", type=float, default=R.val_fraction,
                   help="fraction per class kept out of training for quality metrics (default %(default)s)")
    g.add_argument("--num-workers", type=int, default=R.num_workers, help="data-loader workers (default %(default)s)")
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=sorted(PRESETS), default=R.preset,
                   help="tiny (tests), cpu (64 px, ~4 M params), gpu (128 px, ~18 M params) (default %(default)s)")
    g.add_argument("--resolution", type=int, default=None, help="training resolution in px (default: the preset's)")
    g.add_argument("--block-out-channels", type=lambda s: tuple(int(v) for v in s.split(",")), default=None,
                   metavar="C1,C2,...", help="override the preset's UNet widths")
    g.add_argument("--layers-per-block", type=int, default=None, help="override the preset's ResNet layers per block")
    g.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default=R.prediction_type,
                   help="(default %(default)s)")
    g.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="fine-tune this diffusion checkpoint (keeps its architecture and resolution)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=_positive_int, default=R.batch_size, help="per-device batch (default %(default)s)")
    g.add_argument("--lr", type=float, default=R.lr, help="peak AdamW learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=R.weight_decay, help="(default %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=R.warmup_steps, help="(default %(default)s)")
    g.add_argument("--max-steps", type=_positive_int, default=R.max_steps,
                   help="total optimisation steps; the cosine schedule ends here (default %(default)s)")
    g.add_argument("--max-minutes", type=float, default=None, help="stop cleanly and save once the run's wall time passes this; it counts across --resume, so raise it when resuming a run that stopped on it")
    g.add_argument("--snr-gamma", type=float, default=R.snr_gamma, help="Min-SNR-gamma; 0 = plain MSE (default %(default)s)")
    g.add_argument("--class-dropout", type=float, default=R.class_dropout,
                   help="fraction of labels replaced by 'no class' for guidance (default %(default)s)")
    g.add_argument("--ema-decay", type=float, default=R.ema_decay, help="maximum EMA decay (default %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=R.seed, help="(default %(default)s)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=R.device, help="(default %(default)s)")
    g.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default=R.mixed_precision,
                   help="auto = bf16/fp16 on a GPU, fp32 on a CPU (default %(default)s)")
    g.add_argument("--log-every", type=_positive_int, default=R.log_every, help="steps per loss.csv row (default %(default)s)")
    g.add_argument("--sample-every", type=_positive_int, default=R.sample_every, help="steps per sample grid (default %(default)s)")
    g.add_argument("--checkpoint-every", type=_positive_int, default=R.checkpoint_every,
                   help="steps per checkpoint (default %(default)s)")
    g.add_argument("--save-dtype", choices=["fp32", "fp16"], default=R.save_dtype,
                   help="dtype of the exported pipeline weights (default %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT")
    g.add_argument("--json", action="store_true", help="print the run summary as one JSON line at the end")
    p.set_defaults(func=_cmd_train_diffusion)


def _cmd_train_diffusion(args) -> int:
    from .train_diffusion import DiffusionRecipe, train_diffusion

    options = dict(
        domain=args.domain, data=args.data, out=args.out, preset=args.preset, resolution=args.resolution,
        block_out_channels=args.block_out_channels, layers_per_block=args.layers_per_block,
        prediction_type=args.prediction_type, snr_gamma=args.snr_gamma, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, max_steps=args.max_steps,
        max_minutes=args.max_minutes, class_dropout=args.class_dropout, ema_decay=args.ema_decay,
        val_fraction=args.val_fraction, seed=args.seed, device=args.device, mixed_precision=args.mixed_precision,
        num_workers=args.num_workers, log_every=args.log_every, sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every, save_dtype=args.save_dtype, resume=args.resume,
        init_from=args.init_from,
        progress=not args.json or sys.stderr.isatty(),
    )
    if args.resume:
        options = _keep_recorded_options(args, DiffusionRecipe, options)
    summary = train_diffusion(DiffusionRecipe(**options))
    if not _is_main_process():
        return 0
    print(f"saved {summary['out']} at step {summary['steps']} ({summary['stop_reason']}, "
          f"{summary['seconds'] / 60:.1f} min); sample grid: {summary['out']}/sample_grid.png")
    if args.json:
        print(json.dumps(summary))
    return 0


def _add_generate(sub) -> None:
    from .recipes import SAMPLERS, START_LOG_SNR, STARTS

    p = sub.add_parser(
        "generate",
        help="sample synthetic images from a diffusion checkpoint",
        description="Write PNGs sampled from a class-conditional diffusion checkpoint. Image i uses seed SEED+i, "
        "so the same command writes the same files. --n-per-class writes a labelled OUT/<class>/ dataset.",
    )
    p.add_argument("--checkpoint", required=True, help="diffusion pipeline folder (model_index.json, unet/, scheduler/)")
    p.add_argument("--class", dest="cls", default=None, help="class name to generate (see the checkpoint's classes)")
    p.add_argument("--n", type=_positive_int, default=8, help="number of images of --class (default %(default)s)")
    p.add_argument("--n-per-class", type=_positive_int, default=None,
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
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per forward pass (default %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="(default %(default)s)")
    p.add_argument("--json", action="store_true", help="last line: {n, seconds, images_per_second, files}")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args) -> int:
    from .classify import resolve_device
    from .diffusion import load_pipeline
    from .generate import generate_to_folder

    from .atomic import check_writable

    if args.steps < 1:
        raise MedsynthError(f"--steps must be at least 1, got {args.steps}")
    check_writable(args.out, need_mb=10, option="--out")
    pipe = load_pipeline(args.checkpoint, resolve_device(args.device))
    if args.n_per_class is not None:
        if args.cls is not None:
            raise MedsynthError("give either --class (with --n) or --n-per-class, not both")
        jobs = [(c, args.seed + i * args.n_per_class + j) for i, c in enumerate(pipe.classes) for j in range(args.n_per_class)]
    else:
        if args.cls is None:
            raise MedsynthError(f"--class is required (one of: {', '.join(pipe.classes)}), or use --n-per-class")
        jobs = [(args.cls, args.seed + j) for j in range(args.n)]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # under `accelerate launch`: each process (GPU) takes every world-th image
        from accelerate import PartialState

        from .generate import merge_label_files

        import torch

        state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
        pipe.to(state.device)
        mine = jobs[state.process_index :: world]
        part = f"labels.{state.process_index}.csv"
        summary = generate_to_folder(pipe, mine, args.out, args.sampler, args.steps, args.guidance, args.batch_size,
                                     labelled=args.n_per_class is not None, progress=state.is_main_process,
                                     labels_name=part, start_log_snr=args.start_log_snr,
                                     start_from=args.start_from)
        state.wait_for_everyone()
        if not state.is_main_process:
            return 0
        merge_label_files(args.out, [Path(args.out) / f"labels.{r}.csv" for r in range(world)])
        summary["n"] = len(jobs)
        summary["files"] = [str(Path(args.out) / line.split(",")[0]) for line in
                            (Path(args.out) / "labels.csv").read_text().splitlines()[1:]]
        summary["images_per_second"] = round(len(jobs) / summary["seconds"], 4) if summary["seconds"] else None
    else:
        summary = generate_to_folder(pipe, jobs, args.out, args.sampler, args.steps, args.guidance, args.batch_size,
                                     labelled=args.n_per_class is not None, progress=not args.json,
                                     start_log_snr=args.start_log_snr, start_from=args.start_from)
    if args.n_per_class is not None:  # provenance of a synthetic dataset; train-classifier puts it on its card
        from .data import write_provenance

        write_provenance(args.out, args.checkpoint, pipe, n_per_class=args.n_per_class, sampler=args.sampler,
                         steps=args.steps, guidance=args.guidance, seed=args.seed, start_log_snr=args.start_log_snr,
                         start_from=args.start_from, seconds=summary["seconds"])
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {summary['n']} images to {args.out} in {summary['seconds']:.1f} s "
              f"({summary['images_per_second']:.2f} images/s)")
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
    from .merge import merge_sets

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
    from .curate import curate_set

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
    from .match import match_set

    record = match_set(args.set, args.real, args.out, k=args.k, extra=args.extra, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(record))
    else:
        per = record["matching"]["per_class"]
        done = ", ".join(f"{c} {per[c]['samples']} + {per[c]['extra_copies']} copies of {per[c]['samples_with_copies']}"
                         for c in record["classes"])
        print(f"wrote {sum(record['class_counts'].values())} images to {args.out} ({done})")
    return 0


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
    p.add_argument("--size", type=_positive_int, default=None,
                   help="compare at this resolution (default: the generator's, from generation.json)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference subset (default %(default)s)")
    p.add_argument("--card", default=None,
                   help="checkpoint folder: write quality.json there and the numbers into its README.md")
    p.add_argument("--json", action="store_true", help="last line: the result as one JSON object")
    p.set_defaults(func=_cmd_quality)


def _cmd_quality(args) -> int:
    from . import atomic
    from .data import read_provenance
    from .domains import get_domain
    from .quality import measure_quality, quality_markdown, update_card

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
    p.add_argument("--resolution", type=_positive_int, default=None,
                   help="compare at this resolution (default: the generator's, from generation.json)")
    p.add_argument("--n-max", type=_positive_int, default=None,
                   help="at most this many images per folder, a seeded pick that keeps each class's share")
    p.add_argument("--seed", type=int, default=0, help="seed of every subset and bootstrap (default %(default)s)")
    p.add_argument("--card", default=None, help="checkpoint folder: add the audit's summary to its README.md "
                                                "(and audit.json beside it)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="(default %(default)s)")
    p.add_argument("--json", action="store_true", help="last line: audit.json as one JSON object")
    p.set_defaults(func=_cmd_audit)


def _cmd_audit(args) -> int:
    from .audit import run_audit, update_card, verdict_lines
    from .classify import resolve_device

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


def _csv(kind, what: str):
    """An argparse type: comma-separated values of ``kind``."""
    def parse(text: str):
        try:
            values = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got nothing")
        return values
    return parse


def _add_tstr(sub) -> None:
    from .recipes import SAMPLERS, STARTS
    from .tstr import PRESETS, TRAIN_SETS, TSTRConfig

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
    p.add_argument("--archs", type=_csv(str, "timm names"), default=None, help="comma-separated timm names (instead of --preset)")
    p.add_argument("--train-sets", type=_csv(str, "training sets"), default=TRAIN_SETS,
                   help="comma-separated, from " + ",".join(TRAIN_SETS) + " (default: all)")
    p.add_argument("--fractions", type=_csv(float, "fractions"), default=d["fractions"].default,
                   help="fractions of the real training images, e.g. 1.0,0.25,0.1: the data-scarcity curve (default 1.0)")
    p.add_argument("--seeds", type=_csv(int, "integers"), default=d["seeds"].default, help="e.g. 0,1,2 (default 0)")
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"].default, help="(default %(default)s)")
    p.add_argument("--min-steps", type=int, default=0,
                   help="at least this many optimiser steps per cell: smaller training sets get more epochs, so the "
                        "scarcity curve compares data rather than training length (default 0: off)")
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help="CNN input size (default: the synthetic set's resolution, for every training set)")
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"].default, help="(default %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"].default, help="(default %(default)s)")
    p.add_argument("--select-fraction", type=float, default=d["select_fraction"].default,
                   help="share of --real-train per class kept to select each cell's epoch (default %(default)s)")
    p.add_argument("--synthetic-per-class", type=_positive_int, default=d["synthetic_per_class"].default,
                   help="with --diffusion: images per class to draw (default %(default)s)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=d["sampler"].default, help="(default %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=d["steps"].default, help="(default %(default)s)")
    p.add_argument("--guidance", type=float, default=d["guidance"].default, help="(default %(default)s)")
    p.add_argument("--start-from", choices=list(STARTS), default=d["start_from"].default, help="(default %(default)s)")
    p.add_argument("--synthetic-seed", type=int, default=0, help="seed of the first synthetic image (default 0)")
    p.add_argument("--no-audit", action="store_true", help="skip the synthetic set's audit in the report")
    p.add_argument("--audit-features", type=_csv(str, "feature specs"), default=("lite0",),
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
    p.add_argument("--diffusion-steps", type=_positive_int, default=20000,
                   help="with --protocol study: training steps of the fresh diffusion model (default %(default)s)")
    p.add_argument("--diffusion-preset", choices=["auto", "tiny", "cpu", "gpu"], default="auto",
                   help="with --protocol study: model size (auto: gpu on a GPU, else cpu) (default %(default)s)")
    p.add_argument("--json", action="store_true", help="last line: summary.json as one JSON object")
    p.set_defaults(func=_cmd_tstr)


def _cmd_tstr(args) -> int:
    from .tstr import PRESETS, TSTRConfig, run_tstr

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


def _add_training_stats(sub, name: str, help: str, description: str, func) -> None:
    """A command that adds to a diffusion checkpoint what train-diffusion records from its training images."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--checkpoint", required=True, help="diffusion checkpoint folder")
    p.add_argument("--data", required=True, help="the labelled <class>/<images> folder the model trained on")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=func)


def _add_class_means(sub) -> None:
    _add_training_stats(
        sub, "class-means",
        help="record class_means in a diffusion checkpoint trained before medsynth wrote them",
        description="Sampling starts from each class's mean colour, which train-diffusion records in "
        "model_index.json. A checkpoint trained before that samples from mid-grey, with wrong colours; this "
        "computes the means from the images it trained on (those its split.json lists, if it has one) and "
        "writes them into model_index.json.",
        func=_cmd_class_means,
    )


def _add_start_prior(sub) -> None:
    _add_training_stats(
        sub, "start-prior",
        help="add start_prior.safetensors to a diffusion checkpoint trained before medsynth wrote it",
        description="'generate --start-from prior' starts each sample from a coarse 8x8 layout drawn from a Gaussian "
        "fitted to its class's training images (mean and top principal directions; no image is stored). "
        "train-diffusion writes it; this computes it for an older checkpoint from the images it trained on "
        "(those its split.json lists, if it has one).",
        func=_cmd_start_prior,
    )


def _report(args, result: dict, line: str) -> int:
    print(json.dumps(result) if args.json else line)
    return 0


def _cmd_class_means(args) -> int:
    from .train_diffusion import add_class_means

    result = add_class_means(args.checkpoint, args.data, show=not args.json and _is_main_process())
    means = "; ".join(f"{k} {', '.join(f'{v:+.3f}' for v in m)}" for k, m in result["class_means"].items())
    return _report(args, result, f"wrote class_means of {result['images']} training images to "
                                 f"{Path(args.checkpoint) / 'model_index.json'}: {means}")


def _cmd_start_prior(args) -> int:
    from .train_diffusion import add_start_prior

    result = add_start_prior(args.checkpoint, args.data, show=not args.json and _is_main_process())
    counts = ", ".join(f"{k} {v}" for k, v in result["class_counts"].items())
    return _report(args, result, f"wrote {result['file']}: a {result['grid']}x{result['grid']} start prior from "
                                 f"{result['images']} training images ({counts})")


def _add_card(sub) -> None:
    p = sub.add_parser(
        "card",
        help="rewrite a checkpoint's model card (README.md) from its training records",
        description="Rewrite the README.md model card of a classifier or diffusion checkpoint from the records its "
        "training run wrote (args.json, train_summary.json, train_log.csv or loss.csv), e.g. after upgrading "
        "medsynth. A section written by 'medsynth quality --card' is kept.",
    )
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint folder(s)")
    p.add_argument("--sample-grid", action="store_true",
                   help="diffusion checkpoints: first redraw sample_grid.png with this medsynth's sampler (the "
                   "training run's seeds and settings), e.g. after a sampler fix")
    p.set_defaults(func=_cmd_card)


def _cmd_card(args) -> int:
    from .cards import rebuild_card

    for folder in args.checkpoints:
        if not Path(folder).is_dir():
            raise MedsynthError(f"{folder}: no such checkpoint folder")
        if args.sample_grid:
            if not (Path(folder) / "model_index.json").is_file():
                raise MedsynthError(f"{folder}: --sample-grid needs a diffusion checkpoint (model_index.json); "
                                    "leave it off for a classifier")
            from .diffusion import load_pipeline
            from .train_diffusion import sample_grid, save_png

            save_png(sample_grid(load_pipeline(folder)), Path(folder) / "sample_grid.png")
            print(f"redrew {Path(folder) / 'sample_grid.png'}")
        rebuild_card(folder)
        print(f"rewrote {Path(folder) / 'README.md'}")
    return 0


def _add_ood_fit(sub) -> None:
    p = sub.add_parser(
        "ood-fit", help="fit the out-of-domain guard of a domain on real images",
        description="Describe a domain's real training images in ImageNet Lite0 features (at 64 px, the domains' "
        "training resolution) and set the out-of-domain threshold at the --quantile of held-out real images' "
        "scores. Writes OUT/ood.safetensors: in checkpoints/<domain> it guards every classifier of the domain "
        "(classify, the app and the API flag inputs that do not look like the domain's images).")
    p.add_argument("--domain", required=True, choices=sorted(DOMAINS))
    p.add_argument("--train", required=True, help="real training images, one sub-folder per class")
    p.add_argument("--calibration", required=True, help="real held-out images of the domain (not in --train)")
    p.add_argument("--out", required=True, help="folder for ood.safetensors, e.g. checkpoints/<domain>")
    p.add_argument("--components", type=int, default=64, help="principal axes kept (default %(default)s)")
    p.add_argument("--quantile", type=float, default=0.99,
                   help="share of held-out real images that pass (default %(default)s)")
    p.add_argument("--json", action="store_true", help="last line of stdout: the record as one JSON object")
    p.set_defaults(func=_cmd_ood_fit)


def _cmd_ood_fit(args) -> int:
    from .ood import fit_domain

    if args.components < 1:
        raise MedsynthError(f"--components must be at least 1, got {args.components}")
    record = fit_domain(args.domain, args.train, args.calibration, args.out, args.components, args.quantile)
    if args.json:
        print(json.dumps(record))
    else:
        print(f"wrote {record['path']}: threshold {record['threshold']:.1f} ({record['quantile']:.0%} of "
              f"{record['n_calibration']} held-out images pass; {record['n_train']} training images) "
              f"in {record['seconds']} s")
    return 0


def _add_domains(sub) -> None:
    p = sub.add_parser("domains", help="list the known domains and their classes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_domains)


def _cmd_domains(args) -> int:
    if args.json:
        print(json.dumps({k: {"title": d.title, "classes": list(d.classes), "channels": d.channels,
                              "classifier_size": d.classifier_size, "diffusion_size": d.diffusion_size}
                          for k, d in DOMAINS.items()}))
        return 0
    for key, d in DOMAINS.items():
        print(f"{key:<10} {d.title} ({d.channels} channel{'s' if d.channels > 1 else ''}): {', '.join(d.classes)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="medsynth",
        description="Synthetic medical images from diffusion models, CNN classifiers trained on them, "
        "and explanations of what the classifiers see. Research use only; not a medical device.",
    )
    parser.add_argument("--version", action="version", version=f"medsynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in (_add_train_classifier, _add_evaluate, _add_classify, _add_explain, _add_train_diffusion, _add_generate,
                _add_merge, _add_curate, _add_match, _add_split, _add_quality, _add_audit, _add_tstr, _add_ood_fit, _add_class_means, _add_start_prior, _add_card, _add_domains):
        add(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # which options were given (resume keeps the rest)
    warnings.showwarning = _one_line_warning
    try:
        return args.func(args)
    except MedsynthError as exc:
        print(f"medsynth: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("medsynth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""Training commands: train-classifier, train-diffusion, train-upsampler, class-means, start-prior, card."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..domains import DOMAINS
from ..errors import MedsynthError
from .common import is_main_process, keep_recorded_options, positive_int, report


def _add_train_classifier(sub) -> None:
    from ..recipes import DEFAULT_ARCH
    from ..recipes import ClassifierRecipe as R

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
    g.add_argument("--epochs", type=positive_int, default=R.epochs, help="maximum epochs (default %(default)s)")
    g.add_argument("--batch-size", type=positive_int, default=R.batch_size, help="per-device batch size (default %(default)s)")
    g.add_argument("--lr", type=float, default=R.lr, help="peak AdamW learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=R.weight_decay, help="AdamW weight decay (default %(default)s)")
    g.add_argument("--warmup-epochs", type=float, default=R.warmup_epochs, help="linear warm-up length (default %(default)s)")
    g.add_argument("--label-smoothing", type=float, default=R.label_smoothing, help="(default %(default)s)")
    g.add_argument("--balance", choices=["weights", "none"], default=R.balance,
                   help="class-weighted loss against imbalance, or none (default %(default)s)")
    g.add_argument("--augment", choices=["domain", "strong"], default=R.augment,
                   help="the domain's augmentations, or strong: wider affine and intensity ranges plus blur, "
                   "gamma, pixel noise and random erasing, for training on synthetic images (default %(default)s)")
    g.add_argument("--low-res", type=float, default=R.low_res, metavar="P",
                   help="robustness to small uploads: with probability P reduce a training image to a random size "
                   "between --low-res-floor and its own, maybe JPEG it (quality 40-95) and blur it, and enlarge it "
                   "back; 0 = off (default %(default)s)")
    g.add_argument("--low-res-floor", type=int, default=R.low_res_floor, metavar="PX",
                   help="the smallest size (longer side, px) --low-res reduces to (default %(default)s)")
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

    from ..classify import WEIGHTS_NAME
    from ..recipes import ClassifierRecipe, recipe_options
    from ..training.classifier import STATE_DIR, train_classifier, unfinished_epoch

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
    if args.overwrite and is_main_process():
        # Stale files of the old run must not describe the new weights if this run dies early.
        for name in (WEIGHTS_NAME, "config.json", "README.md", "train_summary.json", "train_log.csv"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    options = recipe_options(ClassifierRecipe, args, pretrained=not args.no_pretrained,
                             progress=not args.json or sys.stderr.isatty())
    if args.resume:
        options = keep_recorded_options(args, ClassifierRecipe, options)
    summary = train_classifier(ClassifierRecipe(**options))
    if not is_main_process():
        return 0
    val = summary["val_metrics"]
    print(f"saved {summary['out']} (best epoch {summary['best_epoch']}/{summary['epochs_run']}, "
          f"{summary['seconds'] / 60:.1f} min)"
          + (f": val accuracy {val['accuracy']:.4f}, macro-F1 {val['macro_f1']:.4f}" if val else ""))
    if args.json:
        print(json.dumps(summary))
    return 0


def _add_train_diffusion(sub) -> None:
    from ..recipes import UNET_PRESETS as PRESETS
    from ..recipes import DiffusionRecipe as R

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
    g.add_argument("--batch-size", type=positive_int, default=R.batch_size, help="per-device batch (default %(default)s)")
    g.add_argument("--lr", type=float, default=R.lr, help="peak AdamW learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=R.weight_decay, help="(default %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=R.warmup_steps, help="(default %(default)s)")
    g.add_argument("--max-steps", type=positive_int, default=R.max_steps,
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
    g.add_argument("--log-every", type=positive_int, default=R.log_every, help="steps per loss.csv row (default %(default)s)")
    g.add_argument("--sample-every", type=positive_int, default=R.sample_every, help="steps per sample grid (default %(default)s)")
    g.add_argument("--checkpoint-every", type=positive_int, default=R.checkpoint_every,
                   help="steps per checkpoint (default %(default)s)")
    g.add_argument("--save-dtype", choices=["fp32", "fp16"], default=R.save_dtype,
                   help="dtype of the exported pipeline weights (default %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT")
    g.add_argument("--json", action="store_true", help="print the run summary as one JSON line at the end")
    p.set_defaults(func=_cmd_train_diffusion)


def _cmd_train_diffusion(args) -> int:
    from ..recipes import DiffusionRecipe, recipe_options
    from ..training.diffusion import train_diffusion

    options = recipe_options(DiffusionRecipe, args, progress=not args.json or sys.stderr.isatty())
    if args.resume:
        options = keep_recorded_options(args, DiffusionRecipe, options)
    summary = train_diffusion(DiffusionRecipe(**options))
    if not is_main_process():
        return 0
    print(f"saved {summary['out']} at step {summary['steps']} ({summary['stop_reason']}, "
          f"{summary['seconds'] / 60:.1f} min); sample grid: {summary['out']}/sample_grid.png")
    if args.json:
        print(json.dumps(summary))
    return 0


def _add_train_upsampler(sub) -> None:
    from ..recipes import UpsamplerRecipe as R

    widths = lambda s: tuple(int(v) for v in s.split(","))  # noqa: E731
    p = sub.add_parser(
        "train-upsampler",
        help="train the super-resolution stage of the cascade (64 -> 128 px) on real images",
        description="Train a diffusion UNet that turns a BASE-px image into a BASE*SCALE-px one, given the "
        "low-resolution image enlarged (bicubic) as extra input channels, on random crops of DATA's real "
        "images, with conditioning augmentation (blur and noise at a random level, which the network is told). "
        "OUT becomes an upsampler checkpoint (model_index.json, unet/, scheduler/) with loss.csv, "
        "samples/step_*.png (held-out images: bicubic | stage | original), a model card and checkpoints/ for "
        "--resume. Runs unchanged under 'accelerate launch -m medsynth'.",
    )
    g = p.add_argument_group("data")
    g.add_argument("--domain", required=True, choices=sorted(DOMAINS), help="domain key; fixes classes and channels")
    g.add_argument("--data", required=True, help="the labelled <class>/<images> folder of real images")
    g.add_argument("--out", required=True, help="output folder (the upsampler checkpoint)")
    g.add_argument("--val-fraction", type=float, default=R.val_fraction,
                   help="fraction per class kept out of training, as train-diffusion does with the same seed "
                   "(default %(default)s)")
    g.add_argument("--num-workers", type=int, default=R.num_workers, help="data-loader workers (default %(default)s)")
    g = p.add_argument_group("model")
    g.add_argument("--scale", type=int, choices=[2, 4], default=R.scale, help="enlargement factor (default %(default)s)")
    g.add_argument("--base-resolution", type=int, default=R.base_resolution,
                   help="the base generator's size in px, which the stage enlarges (default %(default)s)")
    g.add_argument("--crop", type=int, default=R.crop,
                   help="training crop of the high-resolution image in px (default %(default)s)")
    g.add_argument("--block-out-channels", type=widths, default=R.block_out_channels, metavar="C1,C2,...",
                   help="UNet widths (default %(default)s)")
    g.add_argument("--layers-per-block", type=positive_int, default=R.layers_per_block, help="(default %(default)s)")
    g.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default=R.prediction_type,
                   help="(default %(default)s)")
    g.add_argument("--target", choices=["residual", "image"], default=R.target,
                   help="what the network denoises: the residual the enlarged input lacks, scaled by "
                   "--residual-scale (output = bicubic + residual), or the image itself (default %(default)s)")
    g.add_argument("--residual-scale", type=float, default=R.residual_scale,
                   help="factor on the residual before diffusion (default %(default)s)")
    g.add_argument("--max-noise-level", type=int, default=R.max_noise_level,
                   help="conditioning augmentation: the low-resolution input is noised at a random level "
                   "0..this of a 1000-level linear schedule (100: std 0.32 in [-1, 1]) (default %(default)s)")
    g.add_argument("--blur", type=float, default=R.blur,
                   help="share of inputs also blurred (Gaussian, sigma 0.4-1.0 px) (default %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=positive_int, default=R.batch_size, help="per-device batch (default %(default)s)")
    g.add_argument("--lr", type=float, default=R.lr, help="peak AdamW learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=R.weight_decay, help="(default %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=R.warmup_steps, help="(default %(default)s)")
    g.add_argument("--max-steps", type=positive_int, default=R.max_steps,
                   help="total optimisation steps; the cosine schedule ends here (default %(default)s)")
    g.add_argument("--max-minutes", type=float, default=None, help="stop cleanly and save once the run's wall time "
                   "passes this; it counts across --resume, so raise it when resuming a run that stopped on it")
    g.add_argument("--snr-gamma", type=float, default=R.snr_gamma, help="Min-SNR-gamma; 0 = plain MSE (default %(default)s)")
    g.add_argument("--ema-decay", type=float, default=R.ema_decay, help="maximum EMA decay (default %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=R.seed, help="(default %(default)s)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=R.device, help="(default %(default)s)")
    g.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default=R.mixed_precision,
                   help="auto = bf16/fp16 on a GPU, fp32 on a CPU (default %(default)s)")
    g.add_argument("--log-every", type=positive_int, default=R.log_every, help="steps per loss.csv row (default %(default)s)")
    g.add_argument("--sample-every", type=positive_int, default=R.sample_every,
                   help="steps per comparison grid (default %(default)s)")
    g.add_argument("--checkpoint-every", type=positive_int, default=R.checkpoint_every,
                   help="steps per checkpoint (default %(default)s)")
    g.add_argument("--save-dtype", choices=["fp32", "fp16"], default=R.save_dtype,
                   help="dtype of the exported weights (default %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT")
    g.add_argument("--json", action="store_true", help="print the run summary as one JSON line at the end")
    p.set_defaults(func=_cmd_train_upsampler)


def _cmd_train_upsampler(args) -> int:
    from ..recipes import UpsamplerRecipe, recipe_options
    from ..training.upsampler import train_upsampler

    options = recipe_options(UpsamplerRecipe, args, progress=not args.json or sys.stderr.isatty())
    if args.resume:
        options = keep_recorded_options(args, UpsamplerRecipe, options)
    summary = train_upsampler(UpsamplerRecipe(**options))
    if not is_main_process():
        return 0
    print(f"saved {summary['out']} at step {summary['steps']} ({summary['stop_reason']}, "
          f"{summary['seconds'] / 60:.1f} min); held-out comparison: {summary['out']}/sample_grid.png")
    if args.json:
        print(json.dumps(summary))
    return 0


def _add_cascade(sub) -> None:
    p = sub.add_parser(
        "cascade",
        help="name the upsampler a diffusion checkpoint hands its images to (its cascade.json)",
        description="Write DIFFUSION/cascade.json naming UPSAMPLER (as a path relative to DIFFUSION), after checking "
        "that the pair fits (domain, channels, size). generate, the app and tstr --diffusion then write the "
        "upsampler's resolution by default. --none removes the record, so the generator works alone again.",
    )
    p.add_argument("--diffusion", required=True, help="diffusion checkpoint folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--upsampler", help="upsampler checkpoint folder (train-upsampler)")
    g.add_argument("--none", action="store_true", help="remove the cascade record")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=_cmd_cascade)


def _cmd_cascade(args) -> int:
    from ..diffusion import load_pipeline
    from ..upsampler import CASCADE_FILE, check_cascade, load_upsampler, name_upsampler

    folder = Path(args.diffusion)
    if args.none:
        (folder / CASCADE_FILE).unlink(missing_ok=True)
        return report(args, {"diffusion": str(folder), "upsampler": None}, f"{folder} generates alone now")
    pipe = load_pipeline(folder)
    stage = load_upsampler(args.upsampler)
    check_cascade(pipe, stage, args.upsampler)
    path = name_upsampler(folder, args.upsampler)
    size = pipe.unet.config.sample_size
    return report(args, {"diffusion": str(folder), "upsampler": str(args.upsampler), "file": str(path),
                         "resolution": size * stage.scale},
                  f"wrote {path}: {folder} now generates {size * stage.scale}-px images through {args.upsampler}")


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


def _cmd_class_means(args) -> int:
    from ..training.diffusion import add_class_means

    result = add_class_means(args.checkpoint, args.data, show=not args.json and is_main_process())
    means = "; ".join(f"{k} {', '.join(f'{v:+.3f}' for v in m)}" for k, m in result["class_means"].items())
    return report(args, result, f"wrote class_means of {result['images']} training images to "
                                 f"{Path(args.checkpoint) / 'model_index.json'}: {means}")


def _cmd_start_prior(args) -> int:
    from ..training.diffusion import add_start_prior

    result = add_start_prior(args.checkpoint, args.data, show=not args.json and is_main_process())
    counts = ", ".join(f"{k} {v}" for k, v in result["class_counts"].items())
    return report(args, result, f"wrote {result['file']}: a {result['grid']}x{result['grid']} start prior from "
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
    from ..cards.rebuild import rebuild_card

    for folder in args.checkpoints:
        if not Path(folder).is_dir():
            raise MedsynthError(f"{folder}: no such checkpoint folder")
        if args.sample_grid:
            if not (Path(folder) / "model_index.json").is_file():
                raise MedsynthError(f"{folder}: --sample-grid needs a diffusion checkpoint (model_index.json); "
                                    "leave it off for a classifier")
            from ..diffusion import load_pipeline
            from ..training.diffusion import sample_grid, save_png

            save_png(sample_grid(load_pipeline(folder)), Path(folder) / "sample_grid.png")
            print(f"redrew {Path(folder) / 'sample_grid.png'}")
        rebuild_card(folder)
        print(f"rewrote {Path(folder) / 'README.md'}")
    return 0


def register(sub) -> None:
    """Add this group's commands to the ``medsynth`` sub-command parser."""
    _add_train_classifier(sub)
    _add_train_diffusion(sub)
    _add_train_upsampler(sub)
    _add_cascade(sub)
    _add_class_means(sub)
    _add_start_prior(sub)
    _add_card(sub)

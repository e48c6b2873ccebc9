"""The domain registry: one frozen record per medical imaging domain.

Everything that differs between domains (class names and their order, channels, default input
sizes, which augmentations are anatomically sound) is data here. The CLI choices, the app's
dropdowns and the tests read this registry; nothing else in the package branches on a domain key.
Adding a fourth domain is one new entry in ``DOMAINS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import MedsynthError


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentations that keep an image a valid example of its class.

    ``rot90`` rotates by a random multiple of 90 degrees (only where orientation carries no
    meaning, e.g. a blood smear under the microscope). ``degrees``, ``translate`` and ``scale``
    drive a random affine transform; the jitters are ColorJitter strengths (``saturation`` and
    ``hue`` only apply to colour images).
    """

    hflip: bool = True
    vflip: bool = False
    rot90: bool = False
    degrees: float = 0.0
    translate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0


@dataclass(frozen=True)
class Domain:
    """One imaging domain: its classes (folder names, in label order) and defaults."""

    key: str
    title: str
    modality: str
    classes: tuple[str, ...]
    channels: int
    classifier_size: int = 128
    diffusion_size: int = 64
    augmentation: Augmentation = field(default_factory=Augmentation)
    description: str = ""
    #: The public dataset this domain's shipped models are trained on, and its licence as reported.
    dataset: str = ""
    dataset_license: str = "unknown"
    #: Where that dataset is published (model cards link it in their text; it is not a Hub dataset id).
    dataset_url: str = ""
    #: Known caveats of that dataset (confounders, leakage, label noise); every model card lists them.
    caveats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"domain {self.key!r}: channels must be 1 or 3, got {self.channels}")
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ValueError(f"domain {self.key!r}: needs at least two distinct class names")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_index(self, name: str) -> int:
        """Label index of a class name, with an error that lists the valid names."""
        try:
            return self.classes.index(name)
        except ValueError:
            raise MedsynthError(
                f"unknown class {name!r} for domain {self.key!r}; expected one of: {', '.join(self.classes)}"
            ) from None


DOMAINS: dict[str, Domain] = {
    d.key: d
    for d in (
        Domain(
            key="brain_mri",
            title="Brain tumour MRI",
            modality="brain MRI slice",
            classes=("glioma", "meningioma", "notumor", "pituitary"),
            channels=1,
            # Left/right mirroring keeps a brain a brain and a tumour's class does not depend on
            # its side; up/down flips would put the skull base on top, which never occurs.
            augmentation=Augmentation(
                hflip=True, degrees=10, translate=0.05, scale=(0.9, 1.1), brightness=0.15, contrast=0.15
            ),
            description="Axial, coronal and sagittal MRI slices: three tumour types and no tumour.",
            dataset="Brain Tumor MRI Dataset (M. Nickparvar, Kaggle 2021; figshare, SARTAJ and Br35H)",
            dataset_license="CC0-1.0 as reported (not confirmed); component sets have their own terms",
            dataset_url="https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset",
            caveats=(
                "Class and source are confounded: all glioma and most meningioma and pituitary images are "
                "512x512 figshare T1 contrast-enhanced slices, while notumor images come from Br35H/SARTAJ "
                "with mixed sizes and sequences, so a model can separate classes partly by framing and size.",
                "Several slices of one figshare patient can fall on both sides of any split (no patient IDs); "
                "only near-identical images were removed, so validation accuracy is optimistic.",
                "The dataset is reported to contain mislabels (SARTAJ part); labels were not audited.",
                "The public copy was re-encoded as grayscale JPEG (quality ~95, then 92) and resized to a "
                "longer side of at most 256 px.",
            ),
        ),
        Domain(
            key="all_blood",
            title="Acute lymphoblastic leukaemia blood smear",
            modality="peripheral blood smear (ALL)",
            classes=("benign", "early", "pre", "pro"),
            channels=3,
            # A smear seen under the microscope has no up, down, left or right; stain intensity
            # varies between slides, hence mild colour jitter.
            augmentation=Augmentation(
                hflip=True, vflip=True, rot90=True, degrees=15, translate=0.05, scale=(0.9, 1.1),
                brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02,
            ),
            description="Peripheral blood smear images: hematogones (benign) and three B-ALL subtypes.",
            dataset="Acute Lymphoblastic Leukemia (ALL) image dataset (Aria et al., Kaggle 2021; Taleqani Hospital)",
            dataset_license="not confirmed",
            dataset_url="https://www.kaggle.com/datasets/mehradaria/leukemia",
            caveats=(
                "Split by image, not by patient (file names carry no patient IDs): cells and fields of one "
                "patient can be on both sides, so validation accuracy is optimistic.",
                "All images come from one laboratory (Taleqani Hospital, Tehran) with one staining and "
                "microscope set-up; other labs' smears will look different.",
                "The dataset's licence could not be confirmed.",
            ),
        ),
        Domain(
            key="covid_ct",
            title="SARS-CoV-2 chest CT",
            modality="chest CT slice",
            classes=("covid", "non_covid"),
            channels=1,
            # Lung findings occur on both sides, so mirroring is label-preserving; rotations stay small.
            augmentation=Augmentation(
                hflip=True, degrees=7, translate=0.05, scale=(0.92, 1.08), brightness=0.1, contrast=0.1
            ),
            description="Axial chest CT slices of patients with and without SARS-CoV-2 infection.",
            dataset="SARS-CoV-2 CT-scan dataset (Soares et al., medRxiv 2020; Sao Paulo, Brazil)",
            dataset_license="CC BY-NC-SA 4.0 as reported (not confirmed)",
            dataset_url="https://www.kaggle.com/datasets/plameneduardo/sarscov2-ctscan-dataset",
            caveats=(
                "The public copy is incomplete and already down-sized: all 1,252 COVID slices but only 684 of "
                "1,229 non-COVID slices, so classes are ~65/35 instead of ~50/50.",
                "Every slice had been resized to 224x224 without keeping its aspect ratio (squashed).",
                "Split by slice, not by patient (~120 patients, no IDs): adjacent slices of one patient can "
                "be on both sides, so validation accuracy is optimistic.",
                "If the reported CC BY-NC-SA 4.0 licence holds, derived models are non-commercial and share-alike.",
            ),
        ),
    )
}


def get_domain(key: str | Domain) -> Domain:
    """Look a domain up by key, with an error that lists the known keys."""
    if isinstance(key, Domain):
        return key
    try:
        return DOMAINS[key]
    except KeyError:
        raise MedsynthError(f"unknown domain {key!r}; expected one of: {', '.join(DOMAINS)}") from None

"""The domain registry, parametrised so that a new entry is tested automatically."""

from __future__ import annotations

import pytest
import torch

from medsynth.domains import DOMAINS, Domain, get_domain
from medsynth.errors import MedsynthError
from medsynth.transforms import build_augmentation

REGISTRY_CLASSES = {
    "brain_mri": (("glioma", "meningioma", "notumor", "pituitary"), 1),
    "all_blood": (("benign", "early", "pre", "pro"), 3),
    "covid_ct": (("covid", "non_covid"), 1),
}


def test_spec_domains_present_in_order():
    for key, (classes, channels) in REGISTRY_CLASSES.items():
        d = get_domain(key)
        assert d.classes == classes and d.channels == channels


@pytest.mark.parametrize("key", sorted(DOMAINS))
def test_domain_record(key):
    d = DOMAINS[key]
    assert d.key == key and d.num_classes == len(d.classes) >= 2
    assert d.classifier_size >= 32 and d.diffusion_size >= 16
    assert [d.class_index(c) for c in d.classes] == list(range(d.num_classes))
    with pytest.raises(MedsynthError, match=f"unknown class 'nope' for domain '{key}'"):
        d.class_index("nope")


@pytest.mark.parametrize("strength", ["domain", "strong"])
@pytest.mark.parametrize("key", sorted(DOMAINS))
def test_augmentation_keeps_shape_and_range(key, strength):
    d = DOMAINS[key]
    torch.manual_seed(0)
    aug = build_augmentation(d.augmentation, d.channels, strength)
    x = torch.rand(d.channels, 64, 64)
    for _ in range(5):
        y = aug(x)
        assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_strong_augmentation_widens_the_domain_ranges_and_adds_degradations():
    from medsynth.transforms import STRONG, RandomGamma, RandomGaussianNoise

    d = DOMAINS["brain_mri"]
    strong = build_augmentation(d.augmentation, d.channels, "strong")
    kinds = [type(m).__name__ for m in strong]
    assert {"RandomGamma", "RandomApply", "RandomGaussianNoise", "RandomErasing"} <= set(kinds)
    affine = next(m for m in strong if type(m).__name__ == "ReflectAffine").affine
    assert affine.degrees == [-STRONG["degrees"], STRONG["degrees"]] and affine.scale == STRONG["scale"]
    assert len(build_augmentation(d.augmentation, d.channels)) < len(strong)
    # Each degradation changes an image when it fires and leaves it alone when it does not.
    x = torch.rand(1, 16, 16)
    assert not torch.equal(RandomGaussianNoise(0.1, p=1.0)(x), x) and torch.equal(RandomGaussianNoise(0.1, p=0.0)(x), x)
    assert not torch.equal(RandomGamma(2.0, p=1.0)(x), x) and torch.equal(RandomGamma(2.0, p=0.0)(x), x)
    with pytest.raises(ValueError, match="'domain' or 'strong'"):
        build_augmentation(d.augmentation, d.channels, "extreme")


def test_unknown_domain_lists_known():
    with pytest.raises(MedsynthError, match="unknown domain 'lungs'; expected one of: brain_mri"):
        get_domain("lungs")


def test_new_domain_is_one_record():
    d = Domain(key="derm", title="Skin lesions", modality="dermoscopy", classes=("nevus", "melanoma"), channels=3)
    assert d.num_classes == 2 and d.class_index("melanoma") == 1
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        Domain(key="x", title="x", modality="x", classes=("a", "b"), channels=2)

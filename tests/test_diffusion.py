"""Class-conditional diffusion (medsynth.diffusion): presets, the pipeline, its samplers and where sampling starts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsynth.cli import main
from medsynth.diffusion import (
    PRESETS, SAMPLERS, ClassConditionalPipeline, create_unet, load_pipeline, make_noise_scheduler, save_pipeline,
)
from medsynth.errors import MedsynthError
from medsynth.recipes import DiffusionRecipe
from medsynth.training.diffusion import train_diffusion

from conftest import CT


def _gen(seed: int):
    return torch.Generator().manual_seed(seed)


def test_presets_sizes():
    def count(preset, channels=1):
        return sum(p.numel() for p in create_unet(preset, 4, channels).parameters())

    assert 3e6 < count("cpu") < 6e6  # ~4 M parameters: trainable on two cores
    assert count("gpu", 3) < 20e6  # fp16 weights under 40 MB
    assert count("tiny") < 3e5
    assert create_unet("cpu", 4, 1).config.sample_size == PRESETS["cpu"]["resolution"] == 64
    unet = create_unet("cpu", 4, 3, resolution=32, layers_per_block=2)
    assert unet.config.sample_size == 32 and unet.config.layers_per_block == 2 and unet.config.in_channels == 3
    assert unet.config.num_class_embeds == 5  # 4 classes + "no class"
    with pytest.raises(MedsynthError, match="unknown preset 'huge'"):
        create_unet("huge", 4, 1)
    with pytest.raises(MedsynthError, match="must be divisible by 8"):
        create_unet("cpu", 4, 1, resolution=60)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_two_step_sampling(pipe, sampler):
    images = pipe(["covid", "non_covid", 1], num_inference_steps=2, generator=_gen(0), sampler=sampler)
    assert images.shape == (3, 16, 16, 1) and images.dtype == np.uint8
    again = pipe(["covid", "non_covid", 1], num_inference_steps=2, generator=_gen(0), sampler=sampler)
    np.testing.assert_array_equal(images, again)  # same seed, same images
    other = pipe(["covid", "non_covid", 1], num_inference_steps=2, generator=_gen(1), sampler=sampler)
    assert not np.array_equal(images, other)


# Seeded 2-step samples from a seeded, untrained tiny UNet (diffusers' testing style): the image mean
# and a 3x3 slice, recorded with torch 2.14.1 / diffusers 0.42.1 on CPU (re-recorded when sampling
# began at START_LOG_SNR).
RECORDED = {
    "ddpm": (0.32745, [0.023, 0.3572, 0.393, 0.0, 0.2367, 0.0, 1.0, 0.0, 0.0286]),
    "ddim": (0.32919, [0.0253, 0.359, 0.3944, 0.0023, 0.2382, 0.0033, 1.0, 0.0028, 0.0314]),
    "dpmpp": (0.30747, [0.0, 0.0, 0.1243, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
    "dpmpp_sde": (0.28623, [0.0, 0.376, 0.3253, 0.0, 0.1362, 0.0, 1.0, 0.0, 0.313]),
}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_recorded_values(pipe, sampler):
    out = pipe(["covid"], num_inference_steps=2, generator=_gen(0), sampler=sampler, output_type="pt")
    mean, window = RECORDED[sampler]
    assert float(out.mean()) == pytest.approx(mean, abs=2e-3)
    np.testing.assert_allclose(out[0, 0, 6:9, 6:9].flatten().numpy(), window, atol=2e-3)


def test_guidance_changes_the_images(pipe):
    plain = pipe(["covid", "non_covid"], 3, guidance_scale=1.0, generator=_gen(0), output_type="pt")
    guided = pipe(["covid", "non_covid"], 3, guidance_scale=3.0, generator=_gen(0), output_type="pt")
    assert not torch.allclose(plain, guided)


def test_per_image_generators_and_outputs(pipe):
    gens = [_gen(5), _gen(6)]
    pil = pipe(["covid", "covid"], 2, generator=gens, output_type="pil")
    assert len(pil) == 2 and pil[0].size == (16, 16) and pil[0].mode == "L"
    alone = pipe(["covid"], 2, generator=[_gen(6)], output_type="pt")
    pair = pipe(["covid", "covid"], 2, generator=[_gen(5), _gen(6)], output_type="pt")
    torch.testing.assert_close(alone[0], pair[1], atol=1e-4, rtol=0)  # image i depends only on its seed


def test_callback_previews(pipe):
    seen = []
    pipe(["covid"], 4, generator=_gen(0), sampler="ddim",
         callback=lambda i, total, preview: seen.append((i, total, tuple(preview.shape), float(preview.min()), float(preview.max()))))
    # 4 steps on the full schedule are t = 999, 749, 499, 249; 999 is below START_LOG_SNR
    assert [s[0] for s in seen] == [0, 1, 2] and all(s[1] == 3 and s[2] == (1, 1, 16, 16) for s in seen)
    assert all(0.0 <= s[3] and s[4] <= 1.0 for s in seen)


def test_argument_errors(pipe):
    with pytest.raises(MedsynthError, match="unknown class 'flu'; this model knows: covid, non_covid"):
        pipe(["flu"], 2)
    with pytest.raises(MedsynthError, match="unknown sampler 'euler'; expected one of: ddpm, ddim, dpmpp"):
        pipe(["covid"], 2, sampler="euler")
    with pytest.raises(MedsynthError, match="steps must be at least 1"):
        pipe(["covid"], 0)
    with pytest.raises(MedsynthError, match="class index 2 out of range"):
        pipe([2], 2)


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_save_load_round_trip(pipe, tmp_path, dtype):
    save_pipeline(pipe, tmp_path / "p", dtype)
    assert {p.name for p in (tmp_path / "p").iterdir()} == {"model_index.json", "unet", "scheduler",
                                                             "medsynth_diffusion.py"}  # plain diffusers' entry point
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["classes"] == CT and index["domain"] == "covid_ct"
    weights = list((tmp_path / "p" / "unet").glob("*.safetensors"))
    assert weights and weights[0].stat().st_mode & 0o044  # readable by others (safetensors itself writes 0600)
    loaded = load_pipeline(tmp_path / "p")
    assert loaded.classes == CT and loaded.unet.dtype == torch.float32
    for sampler in SAMPLERS:
        a = pipe(["covid", "non_covid"], 3, generator=_gen(2), sampler=sampler, guidance_scale=2.0)
        b = loaded(["covid", "non_covid"], 3, generator=_gen(2), sampler=sampler, guidance_scale=2.0)
        if dtype is None:  # float rounding may move a pixel across a uint8 boundary, no further
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        else:
            assert np.abs(a.astype(int) - b.astype(int)).mean() < 2


def test_load_errors(tmp_path):
    with pytest.raises(MedsynthError, match="is not a diffusion checkpoint"):
        load_pipeline(tmp_path)


def _recipe(tmp_path, data, **kw):
    base = dict(domain="covid_ct", data=str(data), out=str(tmp_path / "run"), preset="tiny", resolution=16,
                batch_size=4, max_steps=3, warmup_steps=1, log_every=1, sample_every=100, checkpoint_every=2,
                device="cpu", progress=False)
    base.update(kw)
    return DiffusionRecipe(**base)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_an_earlier_start_log_snr_adds_the_noisier_steps(sampler, pipe):
    seen = {}
    for start in (-1.5, -10.0):  # t = 858 of the cosine schedule, and t = 999 (pure noise)
        steps = []
        pipe(["covid"], num_inference_steps=10, generator=_gen(0), sampler=sampler, start_log_snr=start,
             callback=lambda i, total, preview: steps.append(total))
        seen[start] = steps[0]
    assert seen[-10.0] > seen[-1.5]  # ddpm/ddim keep t = 999 and 899; DPM-Solver starts at 999, not 858
    with pytest.raises(MedsynthError, match=r"start log-SNR must be in \[-12, 0\]"):
        pipe(["covid"], num_inference_steps=2, start_log_snr=1.0)


def test_frechet_distance_properties():
    from medsynth.quality import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = a + 3.0  # shift every feature by 3: distance = 8 * 3^2
    assert frechet_distance(a, b) == pytest.approx(72.0, rel=1e-6)
    assert frechet_distance(a, rng.normal(size=(400, 8)) * 2) > frechet_distance(a, rng.normal(size=(400, 8)))


def test_lite0_features_shape():
    from medsynth.quality import Lite0Features

    feats = Lite0Features(size=64)([np.zeros((40, 40), np.uint8), np.full((30, 50, 3), 200, np.uint8)])
    assert feats.shape == (2, 1280) and np.isfinite(feats).all()


class OracleUNet(torch.nn.Module):
    """Predicts the exact noise for a known clean image x0, plus a small fixed error.

    eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t) + error. A correct sampler must return ~x0. The
    error mimics a real network's: near t = T, where a_t ~ 0, a sampler that turns it into x0
    without clipping (x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)) blows it up to saturation.
    """

    def __init__(self, x0_value: float, size: int = 16, error: float = 0.05):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(sample_size=size, in_channels=1, num_class_embeds=3)
        self.register_buffer("alphas_cumprod", make_noise_scheduler().alphas_cumprod)
        self.register_buffer("err", error * torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(0)))
        self.x0 = x0_value

    @property
    def dtype(self):
        return torch.float32

    @property
    def device(self):  # DiffusionPipeline.device asks its modules
        return self.err.device

    def forward(self, x, t, class_labels=None):
        from types import SimpleNamespace

        a = self.alphas_cumprod[int(t)]
        # Like a network, it only knows inputs in the range training shows it (|x_t| <~ 4): a sampler
        # that throws x_t far outside cannot be rescued by later steps.
        x = x.clamp(-4, 4)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt() + self.err
        return SimpleNamespace(sample=eps)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 50), ("ddim", 20), ("dpmpp", 20), ("dpmpp", 10), ("dpmpp_sde", 20)])
def test_samplers_recover_the_clean_image_from_an_oracle(sampler, steps):
    x0 = 0.2  # in [-1, 1]: grey level 0.6
    pipe = ClassConditionalPipeline(unet=OracleUNet(x0), scheduler=make_noise_scheduler(), domain="covid_ct", classes=CT)
    out = pipe([0, 1], steps, generator=_gen(0), sampler=sampler, output_type="pt")
    assert float((out - (x0 + 1) / 2).abs().mean()) < 0.08
    assert float(((out == 0) | (out == 1)).float().mean()) < 0.01  # no saturated speckle


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_starts_at_start_log_snr_from_the_class_mean(sampler):
    """Every sampler skips the timesteps where an epsilon network cannot estimate x0 and starts from
    N(sqrt(a) mean_k, (1 - a) I); a model that predicts zero noise then returns its class mean."""
    from medsynth.diffusion import START_LOG_SNR, log_snr, sampler_scheduler

    torch.manual_seed(0)
    unet = create_unet("tiny", num_classes=2, channels=1, resolution=16)
    for p in unet.parameters():
        torch.nn.init.zeros_(p)  # eps = 0: each step only rescales x towards its x0 estimate
    means = [[0.6], [-0.4]]
    pipe = ClassConditionalPipeline(unet=unet, scheduler=make_noise_scheduler(), domain="covid_ct", classes=CT,
                                    class_means=means)
    seen = []
    pipe(["covid"], num_inference_steps=10, generator=_gen(0), sampler=sampler,
         callback=lambda i, total, preview: seen.append(total))
    # 10 steps on the full schedule (stride 100), less those below START_LOG_SNR: ddpm/ddim start at 999 and
    # lose 999 and 899; DPM-Solver's trailing grid starts at its clipped t = 858 and keeps 9
    n = 9 if sampler.startswith("dpmpp") else 8
    assert seen == [n] * n
    lam = log_snr(pipe.scheduler.alphas_cumprod)
    assert lam[858] >= START_LOG_SNR > lam[859]  # the cosine schedule's t = 858
    if sampler.startswith("dpmpp"):
        scheduler = sampler_scheduler(sampler, pipe.scheduler.config)
        scheduler.set_timesteps(10)
        assert int(scheduler.timesteps[0]) == 858
    out = pipe(["covid", "non_covid"] * 8, num_inference_steps=10, generator=_gen(1), sampler=sampler, output_type="pt")
    got = [float(out[0::2].mean()) * 2 - 1, float(out[1::2].mean()) * 2 - 1]
    assert got[0] > got[1] + 0.05, got  # each class starts from its own mean (0.6 vs -0.4)
    # a checkpoint saved before class_means existed still samples (from mid-grey)
    assert ClassConditionalPipeline(unet=unet, scheduler=make_noise_scheduler(), domain="covid_ct",
                                    classes=CT)(["covid"], 2, generator=_gen(0), sampler=sampler).shape == (1, 16, 16, 1)


def test_coarse_prior_fits_the_training_images_at_8x8():
    """The prior is a Gaussian over box-averaged 8x8 thumbnails per class: its mean is the classes' mean
    thumbnail, and its basis reproduces their covariance (here: two layouts, left-bright and right-bright)."""
    from medsynth.diffusion import coarse_prior

    images = np.zeros((6, 16, 16, 1), np.uint8)
    images[:2, :, :8] = 255  # class 0: left half bright ...
    images[2:4, :, 8:] = 255  # ... or right half bright
    images[4:] = 255  # class 1: all bright
    prior = coarse_prior(images, [0, 0, 0, 0, 1, 1], 3, grid=8, rank=4)
    assert prior["mean"].shape == (3, 64) and prior["basis"].shape == (3, 4, 64) and int(prior["grid"]) == 8
    torch.testing.assert_close(prior["mean"][0], torch.zeros(64))  # half left, half right: grey on average
    torch.testing.assert_close(prior["mean"][1], torch.ones(64))
    assert not prior["basis"][1].any() and not prior["basis"][2].any()  # no variation, and an empty class
    x = torch.tensor(images[:4, ::2, ::2, 0].reshape(4, 64) / 127.5 - 1, dtype=torch.float64)
    cov = torch.cov(x.T)
    basis = prior["basis"][0].double()
    torch.testing.assert_close(basis.T @ basis, cov, atol=1e-5, rtol=1e-5)
    with pytest.raises(MedsynthError, match="divisible by 8"):
        coarse_prior(np.zeros((2, 12, 12, 1), np.uint8), [0, 1], 2)


def test_sampling_from_the_start_prior(tmp_path, ct_data, capsys):
    """train-diffusion writes start_prior.safetensors; 'generate --start-from prior' starts each image from
    its own coarse draw (same seed, same image), records it, and a checkpoint without the file says how to add it."""
    from medsynth.diffusion import PRIOR_FILE

    train_diffusion(_recipe(tmp_path, ct_data, max_steps=1))
    run = tmp_path / "run"
    pipe = load_pipeline(run)
    assert (run / PRIOR_FILE).is_file() and pipe.start_prior["mean"].shape == (2, 64)
    assert int(pipe.start_prior["images"]) == len(json.loads((run / "split.json").read_text())["train"])
    labels = ["covid", "non_covid"] * 2
    a = pipe(labels, 2, generator=[_gen(i) for i in range(4)], sampler="dpmpp_sde", start_from="prior")
    b = pipe(labels[:2], 2, generator=[_gen(i) for i in range(2)], sampler="dpmpp_sde", start_from="prior")
    mean = pipe(labels, 2, generator=[_gen(i) for i in range(4)], sampler="dpmpp_sde")
    np.testing.assert_array_equal(a[:2], b)  # image i depends on its own generator only
    assert not np.array_equal(a, mean)
    with pytest.raises(MedsynthError, match="start must be one of mean, prior"):
        pipe(labels, 2, start_from="image")

    out = tmp_path / "syn"
    assert main(["generate", "--checkpoint", str(run), "--n-per-class", "2", "--steps", "2", "--start-from", "prior",
                 "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    assert json.loads((out / "generation.json").read_text())["start_from"] == "prior"
    from medsynth.cards.render import _synthetic_note

    assert "`--start-from prior`" in _synthetic_note(json.loads((out / "generation.json").read_text()))

    # An older checkpoint: generate refuses with the fix, and 'start-prior' writes the same file training does.
    written = (run / PRIOR_FILE).read_bytes()
    (run / PRIOR_FILE).unlink()
    assert main(["generate", "--checkpoint", str(run), "--n-per-class", "1", "--steps", "2", "--start-from", "prior",
                 "--out", str(tmp_path / "x")]) == 2
    assert "medsynth start-prior --checkpoint" in capsys.readouterr().err
    assert main(["start-prior", "--checkpoint", str(run), "--data", str(ct_data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["from_split"] and result["grid"] == 8 and sum(result["class_counts"].values()) == result["images"]
    np.testing.assert_array_equal(load_pipeline(run).start_prior["basis"].numpy(), pipe.start_prior["basis"].numpy())
    assert len((run / PRIOR_FILE).read_bytes()) == len(written)
    # saving the pipeline again keeps the prior; a file for other classes is refused on loading
    save_pipeline(load_pipeline(run), tmp_path / "copy")
    from safetensors import safe_open

    def content(path):  # safetensors may order its header differently from one write to the next
        with safe_open(str(path), "pt") as fh:
            return fh.metadata(), {k: fh.get_tensor(k).tolist() for k in fh.keys()}

    assert content(tmp_path / "copy" / PRIOR_FILE) == content(run / PRIOR_FILE)
    index = json.loads((tmp_path / "copy" / "model_index.json").read_text())
    index["classes"] = ["a", "b"]
    (tmp_path / "copy" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(MedsynthError, match="made for other classes"):
        load_pipeline(tmp_path / "copy")

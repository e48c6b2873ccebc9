"""The cascade's second stage (medsynth.upsampler, training.upsampler, synthetic.upsample): training,
resume, save/load, conditioning augmentation, and the cascade in generate, upsample and the service."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth.cli import main
from medsynth.diffusion import ClassConditionalPipeline, create_unet, make_noise_scheduler, save_pipeline
from medsynth.errors import MedsynthError
from medsynth.recipes import UpsamplerRecipe
from medsynth.training.upsampler import UpsamplerObjective, train_upsampler
from medsynth.upsampler import (
    UpsamplerPipeline, create_upsampler_unet, degrade, load_upsampler, name_upsampler, named_upsampler,
    noise_level_std, save_upsampler,
)

from conftest import CT, make_dataset

TINY = dict(block_out_channels=(16, 16), layers_per_block=1)


def _stage(domain="covid_ct", channels=1, base=16, seed=0) -> UpsamplerPipeline:
    torch.manual_seed(seed)
    unet = create_upsampler_unet(channels, (16, 16), 1, base * 2, norm_num_groups=8)
    return UpsamplerPipeline(unet=unet, scheduler=make_noise_scheduler("v_prediction"), domain=domain, scale=2,
                             base_resolution=base, num_inference_steps=2)


def _recipe(tmp_path, data, **kw):
    base = dict(domain="covid_ct", data=str(data), out=str(tmp_path / "up"), base_resolution=12, crop=16,
                block_out_channels=(32, 32), batch_size=4, max_steps=3, warmup_steps=1, log_every=1,
                sample_every=100, checkpoint_every=2, device="cpu", progress=False, save_dtype="fp32")
    base.update(kw)
    return UpsamplerRecipe(**base)


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    """A saved tiny covid_ct generator (16 px) naming a saved tiny upsampler (16 -> 32 px) in cascade.json."""
    root = tmp_path_factory.mktemp("cascade")
    torch.manual_seed(0)
    unet = create_unet("tiny", num_classes=2, channels=1, resolution=16)
    save_pipeline(ClassConditionalPipeline(unet=unet, scheduler=make_noise_scheduler(), domain="covid_ct",
                                           classes=CT), root / "diffusion")
    save_upsampler(_stage(), root / "upsampler")
    plain = root / "plain"  # the same generator with no cascade.json
    save_pipeline(ClassConditionalPipeline(unet=unet, scheduler=make_noise_scheduler(), domain="covid_ct",
                                           classes=CT), plain)
    name_upsampler(root / "diffusion", root / "upsampler")
    return root


def test_train_resume_save_and_load(tmp_path):
    data = make_dataset(tmp_path / "ct", CT, n_per_class=5, size=24, channels=1)
    summary = train_upsampler(_recipe(tmp_path, data, max_steps=3))
    run = tmp_path / "up"
    assert summary["steps"] == 3 and summary["resolution"] == 24
    assert {"model_index.json", "unet", "scheduler", "loss.csv", "sample_grid.png", "README.md", "args.json",
            "split.json", "checkpoints"} <= {p.name for p in run.iterdir()}
    with pytest.raises(MedsynthError, match="already holds an upsampler run; pass --resume"):
        train_upsampler(_recipe(tmp_path, data))
    with pytest.raises(MedsynthError, match="block_out_channels was"):
        train_upsampler(_recipe(tmp_path, data, resume=True, block_out_channels=(32, 64)))
    summary = train_upsampler(_recipe(tmp_path, data, max_steps=5, resume=True))
    assert summary["steps"] == 5 and summary["resumed_at_steps"] == [3]
    assert [int(r["step"]) for r in csv.DictReader(open(run / "loss.csv"))] == [1, 2, 3, 4, 5]  # none twice
    stage = load_upsampler(run)
    assert stage.config.domain == "covid_ct" and stage.scale == 2 and stage.config.base_resolution == 12
    low = np.random.default_rng(0).integers(0, 255, (2, 12, 12, 1), dtype=np.uint8)
    out = stage(low, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 24, 24, 1) and out.dtype == np.uint8
    card = (run / "README.md").read_text()
    assert "library_name: diffusers" in card and "5 steps" in card and "12 -> 24 px" in card
    # the same split as train-diffusion with the same fraction and seed
    from medsynth.data import scan_dataset, stratified_split

    _, val = stratified_split(scan_dataset(data, CT), 0.1, 0)
    assert json.loads((run / "split.json").read_text())["val"] == [str(s.path) for s in val]


def test_fp16_storage_halves_the_weights_and_loads_in_fp32(tmp_path):
    stage = _stage()
    save_upsampler(stage, tmp_path / "a")
    save_upsampler(stage, tmp_path / "b", torch.float16)
    size = lambda p: (p / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "b") < 0.6 * size(tmp_path / "a")
    assert load_upsampler(tmp_path / "b").unet.dtype == torch.float32


def test_the_augmentation_level_reaches_the_network():
    recipe = UpsamplerRecipe(domain="covid_ct", data="x", out="y", base_resolution=16, crop=16, max_noise_level=50,
                             blur=0.0)
    unet = create_upsampler_unet(1, (16, 16), 1, 32, norm_num_groups=8)
    seen = {}

    def spy(x, t, class_labels=None):
        seen["levels"], seen["channels"] = class_labels, x.shape[1]
        return unet(x, t, class_labels=class_labels)

    objective = UpsamplerObjective(unet, recipe, make_noise_scheduler("v_prediction"), export=None)
    torch.manual_seed(0)
    objective.loss((torch.rand(6, 1, 32, 32) * 2 - 1, torch.zeros(6)), spy)
    assert seen["channels"] == 2 and seen["levels"].shape == (6,)
    assert 0 <= int(seen["levels"].min()) and int(seen["levels"].max()) <= 50 and len(set(seen["levels"].tolist())) > 1
    # the network's answer depends on the level it is told
    x, t = torch.randn(1, 2, 32, 32), torch.tensor([500])
    with torch.no_grad():
        a = unet(x, t, class_labels=torch.tensor([0])).sample
        b = unet(x, t, class_labels=torch.tensor([80])).sample
    assert not torch.allclose(a, b)
    # and the degradation is the recorded schedule's: level 0 changes nothing, higher levels more
    low, noise = torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4)
    out = degrade(low, torch.tensor([0, 25, 100]), noise)
    assert out[0].abs().max() < 0.011 and out[1].mean() == pytest.approx(noise_level_std(25), abs=1e-4)
    assert out[2].mean() > out[1].mean()


def test_the_sampling_level_reaches_the_network_too():
    stage = _stage()
    seen = []
    forward = stage.unet.forward

    def spy(x, t, class_labels=None, **kw):
        seen.append(class_labels)
        return forward(x, t, class_labels=class_labels, **kw)

    stage.unet.forward = spy
    stage(np.zeros((1, 16, 16, 1), np.uint8), noise_level=30, generator=torch.Generator().manual_seed(0))
    assert seen and all(int(c) == 30 for c in torch.cat(seen))


def test_generate_with_the_cascade_writes_twice_the_size_and_the_same_bytes_for_a_seed(cascade, tmp_path):
    args = ["generate", "--checkpoint", str(cascade / "diffusion"), "--class", "covid", "--n", "2", "--steps", "2",
            "--seed", "3", "--json"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    from PIL import Image

    a = sorted((tmp_path / "a").glob("*.png"))
    assert [Image.open(p).size for p in a] == [(32, 32), (32, 32)]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in sorted((tmp_path / "b").glob("*.png"))]
    # --resolution 64-equivalent: the base alone, byte for byte what a generator without a cascade writes
    assert main(args + ["--resolution", "16", "--out", str(tmp_path / "c")]) == 0
    plain = ["generate", "--checkpoint", str(cascade / "plain"), "--class", "covid", "--n", "2", "--steps", "2",
             "--seed", "3", "--json", "--out", str(tmp_path / "d")]
    assert main(plain) == 0
    c, d = sorted((tmp_path / "c").glob("*.png")), sorted((tmp_path / "d").glob("*.png"))
    assert [Image.open(p).size for p in d] == [(16, 16), (16, 16)]
    assert all(np.array_equal(np.array(Image.open(x)), np.array(Image.open(y))) for x, y in zip(c, d))
    # upsampling the base images reproduces the cascade's files (each image's seed from labels.csv)
    assert main(["upsample", "--checkpoint", str(cascade / "upsampler"), str(tmp_path / "c"), "--out",
                 str(tmp_path / "e"), "--json"]) == 0
    assert [p.read_bytes() for p in sorted((tmp_path / "e").glob("*.png"))] == [p.read_bytes() for p in a]


def test_generate_records_both_stages(cascade, tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(cascade / "diffusion"), "--n-per-class", "2", "--steps", "2",
                 "--upsample-steps", "3", "--upsample-noise", "20", "--out", str(tmp_path / "set"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    record = json.loads((tmp_path / "set" / "generation.json").read_text())
    assert record["resolution"] == 32 and record["base_resolution"] == 16
    assert record["upsampler"]["num_inference_steps"] == 3 and record["upsampler"]["noise_level"] == 20
    assert record["upsampler"]["checkpoint"].endswith("upsampler") and summary["resolution"] == 32


def _refused(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_generate_refuses_what_the_cascade_cannot_make(cascade, tmp_path, capsys):
    base = ["generate", "--checkpoint", str(cascade / "plain"), "--class", "covid", "--n", "1", "--steps", "1",
            "--out", str(tmp_path / "x")]
    _refused(base + ["--resolution", "32"], "names no upsampler (cascade.json); pass --upsampler", capsys)
    _refused(base + ["--upsampler", str(cascade / "upsampler"), "--resolution", "48"],
             "--resolution 48 is not available", capsys)
    _refused(base + ["--upsample-steps", "3"], "second stage, which this run does not use", capsys)
    assert not list((tmp_path / "x").glob("*.png"))


@pytest.mark.parametrize("domain, channels, base, message", [
    ("brain_mri", 1, 16, "upsamples brain_mri images, but the generator makes covid_ct images"),
    ("covid_ct", 3, 16, "takes 3-channel images, but the generator makes 1-channel images"),
    ("covid_ct", 1, 32, "enlarges 32-px images, but the generator makes 16-px images"),
])
def test_a_mismatched_pair_is_refused(cascade, tmp_path, capsys, domain, channels, base, message):
    save_upsampler(_stage(domain, channels, base), tmp_path / "other")
    _refused(["generate", "--checkpoint", str(cascade / "plain"), "--class", "covid", "--n", "1", "--steps", "1",
              "--upsampler", str(tmp_path / "other"), "--out", str(tmp_path / "x")], message, capsys)


def test_upsample_keeps_a_labelled_folder_and_its_record(cascade, tmp_path):
    assert main(["generate", "--checkpoint", str(cascade / "plain"), "--n-per-class", "2", "--steps", "2",
                 "--out", str(tmp_path / "set"), "--json"]) == 0
    assert main(["upsample", "--checkpoint", str(cascade / "upsampler"), str(tmp_path / "set"), "--out",
                 str(tmp_path / "big"), "--json"]) == 0
    from PIL import Image

    big = tmp_path / "big"
    assert sorted(p.relative_to(big).as_posix() for p in big.rglob("*.png")) == [
        "covid/covid_000000.png", "covid/covid_000001.png", "non_covid/non_covid_000002.png",
        "non_covid/non_covid_000003.png"]
    assert {Image.open(p).size for p in big.rglob("*.png")} == {(32, 32)}
    record = json.loads((big / "generation.json").read_text())
    assert record["synthetic"] and record["resolution"] == 32 and record["base_resolution"] == 16
    assert record["upsampled_from"] == str(tmp_path / "set")


def test_upsample_refuses_bad_input(cascade, tmp_path, capsys):
    up = ["upsample", "--checkpoint", str(cascade / "upsampler")]
    _refused(up + [str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")], "no such file or folder", capsys)
    _refused(["upsample", "--checkpoint", str(cascade / "diffusion"), str(tmp_path), "--out", str(tmp_path / "o")],
             "is a checkpoint, but not an upsampler", capsys)
    from PIL import Image

    three_levels = UpsamplerPipeline(unet=create_upsampler_unet(1, (16, 16, 16), 1, 32, norm_num_groups=8),
                                     scheduler=make_noise_scheduler("v_prediction"), domain="covid_ct", base_resolution=16)
    save_upsampler(three_levels, tmp_path / "three")
    Image.fromarray(np.zeros((17, 17), np.uint8)).save(tmp_path / "odd.png")
    _refused(["upsample", "--checkpoint", str(tmp_path / "three"), str(tmp_path / "odd.png"), "--out",
              str(tmp_path / "o")], "odd.png is 17x17 px; this upsampler needs sides that become multiples of 4", capsys)


def test_a_broken_cascade_record_says_what_to_do(cascade, tmp_path):
    import shutil

    folder = tmp_path / "diffusion"
    shutil.copytree(cascade / "plain", folder)
    (folder / "cascade.json").write_text('{"upsampler": "../nowhere"}')
    with pytest.raises(MedsynthError, match="holds no checkpoint"):
        named_upsampler(folder)


def test_the_service_streams_both_stages(cascade, tmp_path):
    import shutil

    from medsynth import service

    root = tmp_path / "root"
    (root / "covid_ct").mkdir(parents=True)
    for name in ("diffusion", "upsampler"):
        shutil.copytree(cascade / name, root / "covid_ct" / name)
    store = service.ModelStore(root)
    stages, steps = [], []
    items = service.generate(store, "covid_ct", "covid", 2, "dpmpp", 2, 1.0, 0,
                             on_step=lambda s, t, p: steps.append(p.shape), on_stage=lambda n, s: stages.append((n, s)))
    assert stages == [("base", 16), ("upsampler", 32)]
    assert items[0].image.shape == (32, 32, 1) and steps[0][:2] == (16, 16) and steps[-1][:2] == (32, 32)
    # the CLI's files for the same seeds
    assert main(["generate", "--checkpoint", str(root / "covid_ct" / "diffusion"), "--class", "covid", "--n", "2",
                 "--steps", "2", "--out", str(tmp_path / "cli")]) == 0
    from PIL import Image

    files = sorted((tmp_path / "cli").glob("*.png"))
    assert all(np.array_equal(np.array(Image.open(f)), it.image[..., 0]) for f, it in zip(files, items))


def test_cli_trains_and_resumes(tmp_path, capsys):
    data = make_dataset(tmp_path / "ct", CT, n_per_class=4, size=24, channels=1)
    args = ["train-upsampler", "--domain", "covid_ct", "--data", str(data), "--out", str(tmp_path / "up"),
            "--base-resolution", "12", "--crop", "16", "--block-out-channels", "32,32", "--batch-size", "2",
            "--warmup-steps", "1", "--checkpoint-every", "1", "--device", "cpu", "--json"]
    assert main(args + ["--max-steps", "2"]) == 0
    assert main(args + ["--max-steps", "3", "--resume"]) == 0
    assert json.loads((tmp_path / "up" / "train_summary.json").read_text())["steps"] == 3
    _refused(args + ["--crop", "17", "--out", str(tmp_path / "bad")], "--crop must be at least 16 px and divisible by 2",
             capsys)


def test_the_cascade_command_names_and_removes_the_stage(cascade, tmp_path, capsys):
    import shutil

    folder = tmp_path / "diffusion"
    shutil.copytree(cascade / "plain", folder)
    assert named_upsampler(folder) is None
    assert main(["cascade", "--diffusion", str(folder), "--upsampler", str(cascade / "upsampler"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resolution"] == 32
    assert named_upsampler(folder).resolve() == (cascade / "upsampler").resolve()
    assert not Path(json.loads((folder / "cascade.json").read_text())["upsampler"]).is_absolute()
    save_upsampler(_stage("brain_mri"), tmp_path / "brain_up")
    _refused(["cascade", "--diffusion", str(folder), "--upsampler", str(tmp_path / "brain_up")],
             "upsamples brain_mri images, but the generator makes covid_ct images", capsys)
    assert main(["cascade", "--diffusion", str(folder), "--none"]) == 0
    assert named_upsampler(folder) is None

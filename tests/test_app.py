"""The app: service functions as plain calls, the launched app through gradio_client, and a browser test."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth import service
from medsynth.errors import MedsynthError

from conftest import TINY_ARCH, make_dataset

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "covid_ct" / "covid_00012.jpg"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """Tiny covid_ct checkpoints in the layout of docs/checkpoints.md: diffusion, classifier, classifier_synthetic."""
    from medsynth.diffusion import ClassConditionalPipeline, create_unet, make_noise_scheduler, save_pipeline
    from medsynth.recipes import ClassifierRecipe
    from medsynth.training.classifier import train_classifier

    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    unet = create_unet("tiny", num_classes=2, channels=1, resolution=16)
    pipe = ClassConditionalPipeline(unet=unet, scheduler=make_noise_scheduler(), domain="covid_ct",
                                    classes=["covid", "non_covid"])
    from medsynth.diffusion import coarse_prior

    pipe.start_prior = coarse_prior(np.random.default_rng(0).integers(0, 256, (6, 16, 16, 1), dtype=np.uint8),
                                    [0, 0, 0, 1, 1, 1], 2)
    save_pipeline(pipe, root / "covid_ct" / "diffusion")
    data = make_dataset(tmp_path_factory.mktemp("data"), ["covid", "non_covid"], n_per_class=4, size=36, channels=1)
    train_classifier(ClassifierRecipe(domain="covid_ct", data=str(data), out=str(root / "covid_ct" / "classifier"),
                                      arch=TINY_ARCH, pretrained=False, epochs=1, batch_size=4, image_size=32,
                                      device="cpu", progress=False))
    shutil.copytree(root / "covid_ct" / "classifier", root / "covid_ct" / "classifier_synthetic")
    return root


@pytest.fixture(scope="module")
def store(checkpoints) -> service.ModelStore:
    return service.ModelStore(checkpoints)


def test_store_discovers_and_caches(store):
    assert store.domains_with("diffusion") == ["covid_ct"]
    assert store.pipeline("covid_ct") is store.pipeline("covid_ct")  # loaded once
    assert store.classifier("covid_ct", "synthetic-trained") is not store.classifier("covid_ct", "real-trained")
    with pytest.raises(MedsynthError, match="no diffusion model .diffusion. for brain_mri"):
        store.pipeline("brain_mri")
    with pytest.raises(MedsynthError, match="unknown classifier kind"):
        store.classifier("covid_ct", "best")


def test_store_reloads_a_rewritten_checkpoint(tmp_path, checkpoints):
    shutil.copytree(checkpoints / "covid_ct", tmp_path / "covid_ct")
    s = service.ModelStore(tmp_path)
    first = s.classifier("covid_ct")
    weights = tmp_path / "covid_ct" / "classifier" / "model.safetensors"
    weights.touch()
    import os

    os.utime(weights, (weights.stat().st_atime, weights.stat().st_mtime + 10))
    assert s.classifier("covid_ct") is not first


def test_plan_and_generate(store, tmp_path):
    assert service.plan_jobs(["a", "b"], "all classes", 3, 7) == [("a", 7), ("b", 8), ("a", 9)]
    assert service.plan_jobs(["a", "b"], "b", 2, 0) == [("b", 0), ("b", 1)]
    with pytest.raises(MedsynthError, match="count must be between 1 and 16"):
        service.plan_jobs(["a"], "a", 17, 0)
    with pytest.raises(MedsynthError, match="seed is empty"):
        service.plan_jobs(["a"], "a", 1, None)
    with pytest.raises(MedsynthError, match="seed must be between 0 and"):
        service.plan_jobs(["a"], "a", 1, 2**64)
    steps = []
    # 3 ddim steps on the full schedule are t = 999, 666, 333; 999 lies below START_LOG_SNR, so 2 run
    items = service.generate(store, "covid_ct", "all classes", 2, "ddim", 3, 1.0, 5,
                             on_step=lambda i, n, p: steps.append((i, n, p.shape, p.dtype)))
    assert [it.caption for it in items] == ["covid · seed 5", "non_covid · seed 6"]
    assert steps == [(0, 2, (16, 16, 1), np.uint8), (1, 2, (16, 16, 1), np.uint8)]
    # the same seeds started from the coarse prior give other images
    prior = service.generate(store, "covid_ct", "all classes", 2, "ddim", 3, 1.0, 5, start_from="prior")
    assert [it.caption for it in prior] == [it.caption for it in items]
    assert not np.array_equal(prior[0].image, items[0].image)
    path = service.write_zip(items, tmp_path / "out.zip", "covid_ct")
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["covid/covid_000005.png", "labels.csv", "non_covid/non_covid_000006.png"]
        assert zf.read("labels.csv").decode().splitlines()[1] == "covid/covid_000005.png,covid,5,covid_ct"


def test_classify_and_explain(store, tmp_path):
    probs = service.classify(store, str(EXAMPLE), "covid_ct", "real-trained")
    assert set(probs) == {"covid", "non_covid"} and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    same, lime, cam, summary, _ = service.explain_both(store, str(EXAMPLE), "covid_ct", "real-trained", seed=0)
    assert same == probs  # one code path: Explain reports exactly what Classify reports
    assert lime.ndim == 3 and cam.ndim == 3 and "real-trained classifier" in summary
    assert "Not checked for out-of-domain input" in summary  # the tiny classifier has no reference
    # beside the overlays, the per-image faithfulness check of each map
    assert "LIME: hiding the 3 most relevant regions" in summary and "Grad-CAM: hiding the 3 most" in summary
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(MedsynthError, match="bad.png: not a recognised image"):
        service.classify(store, str(tmp_path / "bad.png"), "covid_ct", "real-trained")
    with pytest.raises(MedsynthError, match="no image"):
        service.classify(store, None, "covid_ct", "real-trained")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data_root")
    make_dataset(root / "ct", ["covid", "non_covid"], n_per_class=4, size=36, channels=1)
    return root


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def running_app(checkpoints, data_root, models_dir, tmp_path_factory):
    import app as app_module

    demo = app_module.build_app(service.ModelStore(checkpoints), data_root=data_root,
                                jobs_dir=tmp_path_factory.mktemp("jobs"), models_dir=models_dir)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_gradio_client_generate_classify_explain(running_app, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(running_app, verbose=False, download_files=str(tmp_path), analytics_enabled=False)
    # any class of the domain is accepted through the API, not only the choices the page was built with
    assert "1 image(s)" in client.predict("covid_ct", "non_covid", 1, "ddim", 2, 1.0, 0, api_name="/generate")[3]
    # four outputs: the gr.State output stays on the server
    preview, gallery, zip_file, status = client.predict("covid_ct", "all classes", 2, "dpmpp", 2, 1.0, 3,
                                                        api_name="/generate")
    assert len(gallery) == 2 and gallery[0]["caption"] == "covid · seed 3" and Path(zip_file).suffix == ".zip"
    assert "2 image(s)" in status and Path(preview).exists()
    status = client.predict("covid_ct", "covid", 1, "ddim", 2, 1.0, 0, "diffusion", "prior", api_name="/generate")[3]
    assert "started from the coarse prior" in status
    # the denoising streams: one preview per step (3 ddim steps, of which 2 run), then the final result
    job = client.submit("covid_ct", "covid", 1, "ddim", 3, 1.0, 0, api_name="/generate")
    job.result()
    outputs = job.outputs()
    # the progress counts the steps the sampler runs, and says why it runs fewer than the 3 set
    assert [o[3] for o in outputs[:-1]][-1].startswith("step 2/2 (3 set: the last 1 would fall where the image")
    assert "1 image(s)" in outputs[-1][3]
    # a client can bypass the sliders: every field answers with its own name
    for kwargs, message in [({"count": 17}, "images must be at most 16, got 17"),
                            ({"steps": "many"}, "steps must be a number, got 'many'"),
                            ({"guidance": "nan"}, "guidance (1 = none) must be a finite number"),
                            ({"seed": -5}, "seed must be between 0 and"),
                            ({"sampler": "euler"}, "euler is not in the list of choices")]:
        with pytest.raises(Exception, match=re.escape(message)):
            client.predict(domain="covid_ct", **kwargs, api_name="/generate")
    # the calls exactly as the README documents them: the image alone, or with keyword arguments
    label, summary = client.predict(handle_file(str(EXAMPLE)), api_name="/classify")
    assert {c["label"] for c in label["confidences"]} == {"covid", "non_covid"} and "classifier" in summary
    again, _ = client.predict(handle_file(str(EXAMPLE)), domain="covid_ct", classifier="real-trained",
                              api_name="/classify")
    assert again == label
    explained, lime, cam, summary = client.predict(handle_file(str(EXAMPLE)), domain="covid_ct", lime_seed=0,
                                                   api_name="/explain")
    assert explained == label  # Explain and Classify: the same probabilities for the same image
    assert Path(lime).exists() and Path(cam).exists() and "LIME" in summary
    (tmp_path / "my scan (1).png").write_bytes(b"nope")
    with pytest.raises(Exception, match=r"my scan \(1\)\.png: not a recognised image") as caught:
        client.predict(handle_file(str(tmp_path / "my scan (1).png")), api_name="/classify")
    assert "/tmp" not in str(caught.value) and "gradio" not in str(caught.value)  # its own name, no server path
    # a blank image: the headline says so, never a class; the probabilities stay, said to mean nothing
    from PIL import Image

    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / "grey.png")
    label, summary = client.predict(handle_file(str(tmp_path / "grey.png")), domain="covid_ct", api_name="/classify")
    assert label["label"] == "blank image" and {c["label"] for c in label["confidences"]} == {"covid", "non_covid"}
    assert "not meaningful" in summary and "no class is given" in summary
    label, lime, cam, summary = client.predict(handle_file(str(tmp_path / "grey.png")), domain="covid_ct",
                                               api_name="/explain")
    assert label["label"] == "blank image" and lime is None and cam is None and "Nothing to explain" in summary
    # a chest CT volume: the middle slice by default, any slice through `frame`, and the summary says which
    import nibabel as nib

    volume = np.full((48, 48, 5), -1000, np.int16)
    for z in range(5):
        volume[8:40, 8:40, z] = -700 + 150 * z  # every slice different
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "chest.nii.gz")
    middle, summary = client.predict(handle_file(str(tmp_path / "chest.nii.gz")), domain="covid_ct",
                                     api_name="/classify")
    assert "frame/slice 2 of 5" in summary
    same, _ = client.predict(handle_file(str(tmp_path / "chest.nii.gz")), domain="covid_ct", frame=2,
                             api_name="/classify")
    first, summary = client.predict(handle_file(str(tmp_path / "chest.nii.gz")), domain="covid_ct", frame=0,
                                    api_name="/classify")
    assert same == middle and first != middle and "frame/slice 0 of 5" in summary
    with pytest.raises(Exception, match=r"chest\.nii\.gz: slice 5 does not exist"):
        client.predict(handle_file(str(tmp_path / "chest.nii.gz")), domain="covid_ct", frame=5, api_name="/classify")
    client.close()


def _coloured_pixels(png: bytes) -> int:
    """Pixels of a screenshot that are clearly coloured (a plotted line), not grey text, axes or background."""
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb.max(2) - rgb.min(2)) > 80).sum())


def test_browser_flows(running_app, models_dir, tmp_path):
    """In Debian's chromium, as a visitor: generate, send one to Classify, classify, explain, drop a bad file,
    pick an example, and train a job whose loss curve draws. Screenshots of each step are saved to
    MEDSYNTH_SCREENSHOTS (a folder) when it is set."""
    import time

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("chromium is not installed: sudo apt-get install -y chromium (Debian/Ubuntu; .ci/run does this)")
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("MEDSYNTH_SCREENSHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    (tmp_path / "notes.txt").write_text("not a scan")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(running_app)
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.get_by_text("image(s) in")).to_be_visible(timeout=60_000)
        expect(page.locator("#generate-gallery img")).to_have_count(4)  # every image asked for is shown
        page.screenshot(path=str(shots / "1_generate.png"), full_page=True)
        page.locator("#generate-gallery img").nth(1).click()
        page.get_by_role("button", name="Send selected image to Classify").click()
        expect(page.locator("#scan-view img")).to_be_visible(timeout=30_000)  # what the CNN sees
        expect(page.locator("#scan-file").get_by_text("generated_")).to_be_visible()
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.locator("#scan-summary").get_by_text("real-trained classifier")).to_be_visible(timeout=60_000)
        expect(page.locator("#scan-label").get_by_text("non_covid").first).to_be_visible()
        page.get_by_role("button", name="Explain (LIME + Grad-CAM)").click()
        expect(page.locator("#scan-lime img")).to_be_visible(timeout=120_000)
        page.screenshot(path=str(shots / "2_classify_explain.png"), full_page=True)
        # a bad file: its own name and what is wrong, and the old results are gone
        page.locator("#scan-file").get_by_label("Clear").click()
        page.locator("#scan-file input[type=file]").set_input_files(str(tmp_path / "notes.txt"))
        expect(page.locator("#scan-summary").get_by_text("notes.txt: not a recognised image")).to_be_visible(
            timeout=30_000)
        expect(page.locator("#scan-lime img")).to_have_count(0)
        expect(page.locator("#scan-label").get_by_text("non_covid")).to_have_count(0)
        page.wait_for_timeout(1000)  # a toast would have appeared by now
        expect(page.get_by_text("notes.txt: not a recognised image")).to_have_count(1)  # said once, in the summary
        page.screenshot(path=str(shots / "3_bad_file.png"), full_page=True)
        # an example, labelled with its true class, replaces it
        page.get_by_text("covid_ct: covid", exact=True).first.click()
        expect(page.locator("#scan-view img")).to_be_visible(timeout=30_000)
        expect(page.locator("#scan-summary").get_by_text("Cannot use this file")).to_have_count(0)
        # the Train tab: only the chosen job's fields, and a loss curve that draws while it runs
        page.get_by_role("tab", name="Train").click()
        expect(page.get_by_label("diffusion steps")).to_be_hidden()
        page.locator("#train-domain input").click()
        page.get_by_role("option", name="covid_ct").click()
        page.get_by_label("data folder (inside the data root; one sub-folder per class)").fill("ct")
        page.get_by_label("classifier epochs").fill("3")
        page.get_by_label("output name (empty: the name shown)").fill("browser_job")
        page.get_by_role("button", name="Start", exact=True).click()
        expect(page.get_by_text("finished", exact=True)).to_be_visible(timeout=240_000)
        time.sleep(3)  # one more tick of the 2-s timer after the last epoch
        plot = page.locator("#train-plot")
        plot.scroll_into_view_if_needed()
        png = plot.screenshot(path=str(shots / "4_train_plot.png"))
        page.screenshot(path=str(shots / "4_train.png"), full_page=True)
        browser.close()
    assert (models_dir / "covid_ct" / "browser_job" / "model.safetensors").is_file()
    assert _coloured_pixels(png) > 200, "the loss plot drew no line"


def test_train_tab_runs_a_job_whose_checkpoint_appears(running_app, checkpoints, models_dir, tmp_path):
    """Start a 1-epoch classifier job through the API, watch its status, then find its checkpoint."""
    import time

    from gradio_client import Client

    client = Client(running_app, verbose=False, download_files=str(tmp_path), analytics_enabled=False)
    with pytest.raises(Exception, match="outside the data root|inside the data root|not inside|escapes"):
        client.predict("classifier", "covid_ct", "../../etc", 1, 1, 4, 0, api_name="/train_start")
    # fine-tune the installed real-trained classifier for one epoch
    with pytest.raises(Exception, match="does not fit brain_mri: .*'covid' is not a known class"):
        client.predict("classifier", "brain_mri", "ct", 1, 1, 4, 0, api_name="/train_start")
    status, log, _ = client.predict("classifier", "covid_ct", "ct", 1, 1, 4, 0, "classifier", "ft_ct",
                                    api_name="/train_start")
    assert status.startswith("**running**") and "train-classifier" in status
    with pytest.raises(Exception, match="already running"):
        client.predict("classifier", "covid_ct", "ct", 1, 1, 4, 0, api_name="/train_start")
    deadline = time.time() + 240
    while time.time() < deadline:
        status, log, _ = client.predict(api_name="/train_status")
        if not status.startswith("**running**"):
            break
        time.sleep(1)
    assert status.startswith("**finished**"), log
    assert "--init-from" in log
    # written under the models folder, named as asked, never inside the shipped checkpoints
    assert (models_dir / "covid_ct" / "ft_ct" / "model.safetensors").is_file()
    assert not any(p.name == "ft_ct" for p in (checkpoints / "covid_ct").iterdir())
    assert "ft_ct" in service.ModelStore(checkpoints, user_root=models_dir).classifier_kinds("covid_ct")
    points = [p for p in client.predict(api_name="/train_status")[2]["data"]]
    assert points, "the loss plot gets the job's points"
    with pytest.raises(Exception, match="a model named 'ft_ct' already exists"):
        client.predict("classifier", "covid_ct", "ct", 1, 1, 4, 0, "none (ImageNet / from scratch)", "ft_ct",
                       api_name="/train_start")
    from gradio_client import handle_file

    label, _ = client.predict(handle_file(str(EXAMPLE)), "covid_ct", "ft_ct", api_name="/classify")
    assert {c["label"] for c in label["confidences"]} == {"covid", "non_covid"}
    client.close()


def _pids_running(needle: str) -> list[int]:
    """Processes whose command line contains ``needle`` (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_killed_training_job_is_reported_and_the_same_name_continues_it(checkpoints, data_root, tmp_path):
    """The job's process is SIGKILLed from outside (as the out-of-memory killer would): the Train tab says
    so and what to do, the app keeps serving, and starting the same job again resumes it."""
    import signal
    import time

    import app as app_module

    models = tmp_path / "models"
    demo = app_module.build_app(service.ModelStore(checkpoints), data_root=data_root, jobs_dir=tmp_path / "jobs",
                                models_dir=models)
    fns = {b.api_name: b.fn for b in demo.fns.values()}
    out = models / "covid_ct" / "oom_ct"
    status, _, _ = fns["train_start"]("classifier", "covid_ct", "ct", 1, 30, 4, 0, "classifier", "oom_ct")
    assert status.startswith("**running**")
    deadline = time.time() + 120
    while not (out / "state" / "state.json").is_file():
        assert time.time() < deadline and fns["train_status"]()[0].startswith("**running**"), fns["train_status"]()
        time.sleep(0.05)
    for pid in _pids_running(str(out)):
        os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while (status := fns["train_status"]()[0]).startswith("**running**"):
        assert time.time() < deadline
        time.sleep(0.2)
    assert status.startswith("**failed**") and "killed by SIGKILL (out of memory" in status, status
    assert "stopped after epoch" in status and "same output name (oom_ct) to continue it" in status
    probs, _ = fns["classify"](str(EXAMPLE), "covid_ct", "real-trained")  # the app keeps serving
    assert set(probs) == {"covid", "non_covid"}

    status, _, _ = fns["train_start"]("classifier", "covid_ct", "ct", 1, 30, 4, 0, "classifier", "oom_ct")
    assert status.startswith("**running**") and "--resume" in status
    deadline = time.time() + 240
    while (status := fns["train_status"]()[0]).startswith("**running**"):
        assert time.time() < deadline
        time.sleep(0.5)
    assert status.startswith("**finished**"), fns["train_status"]()[1]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_at_epochs"] and summary["epochs_run"] > summary["resumed_at_epochs"][0]
    assert (out / "train_log.csv").read_text().count("\n") == summary["epochs_run"] + 1  # every epoch once
    assert not (out / "state").exists()
    import gradio as gr

    with pytest.raises(gr.Error, match="a model named 'oom_ct' already exists"):  # finished: not resumed again
        fns["train_start"]("classifier", "covid_ct", "ct", 1, 30, 4, 0, "classifier", "oom_ct")


def test_experiment_tab_runs_tstr_as_a_job_and_selects_its_report(checkpoints, tmp_path, monkeypatch):
    """Start a tiny synthetic-only tstr run from the Experiment tab, follow it to the end, get its report."""
    import time

    import gradio as gr

    import app as app_module

    root = tmp_path / "data"
    make_dataset(root / "split" / "train", ["covid", "non_covid"], n_per_class=6, size=36, channels=1, seed=1)
    make_dataset(root / "split" / "val", ["covid", "non_covid"], n_per_class=3, size=36, channels=1, seed=2)
    make_dataset(root / "one_class", ["covid"], n_per_class=3, size=36, channels=1)
    monkeypatch.setenv("MEDSYNTH_RESULTS", str(tmp_path / "results"))
    demo = app_module.build_app(service.ModelStore(checkpoints), data_root=root, jobs_dir=tmp_path / "jobs")
    fns = {b.api_name: b.fn for b in demo.fns.values()}
    start = fns["experiment_start"]
    ok = ("covid_ct", "split/train", "split/val", "diffusion", "cpu", ["synthetic"], "1.0", "0", 1, 2, 0, "")
    for bad, message in [
        ({1: "../../etc"}, "outside the data root"),
        ({2: "one_class"}, "real test folder: .*class folder 'non_covid' is missing"),
        ({2: "split/train"}, "the real test folder is the training folder"),
        ({6: "1.0,abc"}, "fractions: 'abc' is not a number"),
        ({1: "no_such_folder"}, "real training folder: data folder .*no_such_folder does not exist"),
        ({6: "1.5"}, "fractions: 1.5 is outside 0.01 to 1"),
        ({7: "nan"}, "seeds: 'nan' is not a whole number"),
        ({7: "-1"}, "seeds: -1 is outside 0 to 2147483647"),
        ({8: float("inf")}, "epochs must be a whole number"),
        ({5: []}, "training sets must be some of"),
        ({11: "../up"}, "run name '../up': use letters"),
    ]:
        args = list(ok)
        for i, v in bad.items():
            args[i] = v
        with pytest.raises(gr.Error, match=message):
            start(*args)
    text, _, _ = start(*ok)
    assert text.startswith("**running**") and "0 of " in text and "medsynth tstr --domain covid_ct" in text
    deadline = time.time() + 300
    while time.time() < deadline:
        text, log, frame, report, seen = fns["experiment_status"](None)
        if not text.startswith("**running**"):
            break
        time.sleep(1)
    assert text.startswith("**finished**") and "2 of 2 cells" in text, log
    drawn = frame.dropna()  # the NaN rows keep every series in the plot's colour scale and draw nothing
    assert list(drawn["series"]) == ["synthetic", "synthetic"] and drawn["y"].between(0, 1).all()
    assert set(frame["series"]) == {"real", "synthetic", "mixed"}
    assert report.value.startswith("covid_ct · train on synthetic, test on real · yours · tstr_covid_ct")
    assert (tmp_path / "results" / "tstr_covid_ct" / "report.md").is_file()
    _, _, _, again, _ = fns["experiment_status"](seen)  # selected once, not again on every tick
    assert not isinstance(again, gr.Dropdown)
    with pytest.raises(gr.Error, match="tstr_covid_ct holds a run with other settings .epochs: was 1.; choose another"):
        start(*ok[:8], 2, *ok[9:])
    assert fns["experiment_cancel"]()[0].startswith("**finished**")  # nothing running: nothing to stop


def _markdown_texts(demo) -> str:
    import gradio as gr

    return "\n".join(str(b.value) for b in demo.blocks.values() if isinstance(b, gr.Markdown))


def test_training_is_disabled_in_a_public_space(checkpoints, data_root, monkeypatch):
    import app as app_module

    without_root = app_module.build_app(service.ModelStore(checkpoints), data_root=None)
    assert ("**Start is off** because no data root is set: start the app with "
            "`MEDSYNTH_DATA_ROOT=/path/to/data python app.py`") in _markdown_texts(without_root)
    monkeypatch.setenv("SPACE_ID", "someone/medsynth")
    demo = app_module.build_app(service.ModelStore(checkpoints), data_root=data_root)
    assert "**Start is off** because training is disabled in the public Space" in _markdown_texts(demo)
    fns = {b.api_name: b.fn for b in demo.fns.values()}
    import gradio as gr

    with pytest.raises(gr.Error, match="training is disabled in the public Space"):
        fns["train_start"]("classifier", "covid_ct", "ct", 1, 1, 4, 0)
    with pytest.raises(gr.Error, match="training is disabled in the public Space"):
        fns["train_cancel"]()
    with pytest.raises(gr.Error, match="training is disabled in the public Space"):
        fns["experiment_start"]("covid_ct", "ct", "ct", "diffusion", "cpu", ["synthetic"], "1.0", "0", 1, 2, 0, "")


def test_model_lists_call_the_shipped_models_shipped(checkpoints):
    import gradio as gr

    import app as app_module

    demo = app_module.build_app(service.ModelStore(checkpoints))
    dropdowns = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label.startswith("model (")]
    assert dropdowns and dropdowns[0].choices[0] == ("shipped", "diffusion")  # the API value stays "diffusion"


def test_send_selected_image_to_classify(checkpoints):
    import gradio as gr

    import app as app_module

    demo = app_module.build_app(service.ModelStore(checkpoints))
    fns = {b.api_name: b.fn for b in demo.fns.values()}
    assert fns["select_generated"](gr.SelectData(None, {"index": 1, "value": None})) == 1
    items = service.generate(service.ModelStore(checkpoints), "covid_ct", "all classes", 2, "ddim", 2, 1.0, 0)
    file, domain, tabs = fns["send_to_classify"]({"domain": "covid_ct", "items": items}, 7)  # stale index
    from medsynth.io import load_image

    assert np.array_equal(load_image(file, 1), items[1].image) and domain["value"] == "covid_ct"
    assert Path(file).name == f"generated_{items[1].class_name}_seed1.png"
    assert tabs.selected == "classify"


def test_cancelled_generation_stops_its_worker(tmp_path):
    """A visitor who cancels or leaves frees the CPU: the sampling thread ends at its next step.

    With the 64-px cpu-preset UNet, 16 images x 100 ddpm steps take ~30 s here; the worker must be
    gone within 3 s of the stream being closed.
    """
    import threading
    import time

    import app as app_module
    from medsynth.diffusion import ClassConditionalPipeline, create_unet, make_noise_scheduler, save_pipeline

    save_pipeline(ClassConditionalPipeline(unet=create_unet("cpu", 2, 1), scheduler=make_noise_scheduler(),
                                           domain="covid_ct", classes=["covid", "non_covid"]),
                  tmp_path / "covid_ct" / "diffusion")
    demo = app_module.build_app(service.ModelStore(tmp_path), jobs_dir=tmp_path / "jobs")
    generate = next(b.fn for b in demo.fns.values() if b.api_name == "generate")
    stream = generate("covid_ct", "all classes", 16, "ddpm", 100, 1.0, 0, "diffusion", progress=lambda *a, **k: None)
    next(stream)  # the first preview: sampling is under way
    closed = time.time()
    stream.close()  # what gradio does when the client cancels or disconnects
    while time.time() - closed < 3 and any(t.name == "medsynth-generate" for t in threading.enumerate()):
        time.sleep(0.05)
    assert not any(t.name == "medsynth-generate" for t in threading.enumerate())


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "abc", "", None, 2.5])
def test_whole_number_fields_refuse_non_numbers_with_the_field_name(value):
    with pytest.raises(MedsynthError, match="LIME seed (must be a whole number|is empty)"):
        service.whole_number(value, "LIME seed", 0, 10)

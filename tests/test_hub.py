"""The Hugging Face way (medsynth.hub, medsynth.space, the cards): checkpoints by Hub id from a standard
cache, checkpoints that timm and diffusers read, cards that follow the Hub spec, a Space exported in one
command and answering /classify, and a wheel that installs beside other packages. No test reaches the network."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth.errors import MedsynthError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints"
EXAMPLE = ROOT / "examples" / "brain_mri" / "glioma_00010.jpg"
DOMAINS = ("brain_mri", "covid_ct", "all_blood")


def _hub_cache(home: Path, repo_id: str, files: dict[str, Path]) -> str:
    """A Hugging Face cache laid out as huggingface_hub writes it: refs/main -> snapshots/<commit>/..."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    for rel, src in files.items():
        target = snapshot / rel
        if src.is_dir():
            shutil.copytree(src, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target)
    return commit


def test_hub_ids_resolve_offline_from_the_cache(tmp_path, monkeypatch, trained_tiny):
    from medsynth.classify import load_classifier
    from medsynth.hub import parse, resolve

    assert parse("hf://me/models/brain/classifier@v1") == ("me/models", "brain/classifier", "v1")
    with pytest.raises(MedsynthError, match="not a Hub id"):
        parse("hf://no-owner")
    _hub_cache(tmp_path / "hf", "me/medsynth-blood", {"classifier": trained_tiny[0]})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = resolve("hf://me/medsynth-blood/classifier")
    assert (folder / "config.json").is_file() and str(tmp_path / "hf") in str(folder)
    clf = load_classifier("hf://me/medsynth-blood/classifier")
    assert clf.config.domain == "all_blood"
    with pytest.raises(MedsynthError, match=r"hf://me/unknown: not in the Hugging Face cache and HF_HUB_OFFLINE=1"):
        resolve("hf://me/unknown")
    with pytest.raises(MedsynthError, match="has no folder 'nope'"):
        resolve("hf://me/medsynth-blood/nope")


def test_a_missing_checkpoints_folder_says_where_the_models_are(tmp_path):
    from medsynth.cli import main

    proc = subprocess.run([sys.executable, "-m", "medsynth", "classify", "--checkpoint",
                           str(tmp_path / "site-packages" / "checkpoints" / "brain_mri" / "classifier"), str(EXAMPLE)],
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pip install` does not include" in proc.stderr and "MEDSYNTH_CHECKPOINTS" in proc.stderr
    assert main(["classify", "--checkpoint", "hf://someone/nothing", str(EXAMPLE)]) == 2


@pytest.mark.parametrize("domain", DOMAINS)
def test_timm_reads_the_shipped_classifiers_with_identical_logits(domain):
    import timm

    from medsynth.classify import load_classifier
    from medsynth.io import load_image

    for folder in ("classifier", "classifier_synthetic"):
        path = SHIPPED / domain / folder
        clf = load_classifier(path)
        model = timm.create_model(f"local-dir:{path}", pretrained=True).eval()
        example = sorted((ROOT / "examples" / domain).glob("*.jpg"))[0]
        x = clf.preprocess([load_image(example, clf.config.channels)])
        with torch.inference_mode():
            assert torch.equal(model(x), clf.model(x))
        assert model.pretrained_cfg["label_names"] == clf.classes


def test_diffusers_reads_the_shipped_pipelines(tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    from medsynth.diffusion import load_pipeline

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = SHIPPED / "covid_ct" / "diffusion"
    plain = DiffusionPipeline.from_pretrained(folder, custom_pipeline="medsynth_diffusion", trust_remote_code=True)
    ours = load_pipeline(folder)
    same = [torch.Generator().manual_seed(3)], [torch.Generator().manual_seed(3)]
    assert np.array_equal(plain([1], num_inference_steps=2, generator=same[0]),
                          ours([1], num_inference_steps=2, generator=same[1]))
    up = DiffusionPipeline.from_pretrained(SHIPPED / "covid_ct" / "upsampler", custom_pipeline="medsynth_upsampler",
                                           trust_remote_code=True)
    assert type(up).__name__ == "UpsamplerPipeline"


@pytest.mark.parametrize("domain", DOMAINS)
def test_shipped_cards_follow_the_hub_spec(domain):
    from huggingface_hub import ModelCard

    names = set()
    for folder in ("diffusion", "upsampler", "classifier", "classifier_synthetic"):
        path = SHIPPED / domain / folder
        card = ModelCard.load(path / "README.md")
        data = card.data
        assert data.license == "other" and data.license_name and data.license_link == "LICENSE.md"
        assert (path / "LICENSE.md").is_file()
        assert not data.get("datasets"), "datasets are linked in the text, not given as Hub ids"
        if folder.startswith("classifier"):
            assert data.pipeline_tag == "image-classification" and data.library_name == "timm"
            assert data.base_model.startswith("timm/tf_efficientnet_lite")
            held_out = next(iter(json.loads((path / "evaluation.json").read_text()).values()))
            values = {r.metric_type: r.metric_value for r in data.eval_results}
            assert values == {"accuracy": round(held_out["accuracy"], 4), "f1": round(held_out["macro_f1"], 4)}
            assert data.model_name not in names
            names.add(data.model_name)
        elif folder == "diffusion":
            assert data.pipeline_tag is None and "class-conditional-image-generation" in data.tags
        else:
            assert data.pipeline_tag == "image-to-image"
        assert "https://www.kaggle.com/datasets/" in card.text


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from medsynth.space import export

    out = tmp_path_factory.mktemp("space") / "space"
    record = export(out)
    return out, record


def test_space_export_sends_every_large_file_through_lfs(exported):
    from medsynth.space import LFS_PATTERNS

    out, record = exported
    assert record["files"] > 50 and (out / "app.py").is_file() and (out / "medsynth" / "io.py").is_file()
    for path in out.rglob("*"):
        if path.is_file() and path.stat().st_size > 1_000_000:
            rel = path.relative_to(out).as_posix()
            assert any(fnmatch.fnmatch(path.name, p) for p in LFS_PATTERNS), rel
    attributes = (out / ".gitattributes").read_text()
    assert "*.safetensors filter=lfs diff=lfs merge=lfs -text" in attributes
    front = (out / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front
    requirements = (out / "requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements and "torch==2.14.1+cpu" in requirements


def test_space_push_dry_run_lists_without_the_network(exported, monkeypatch, capsys):
    import huggingface_hub

    from medsynth.cli import main

    def no_network(*a, **k):
        raise AssertionError("a dry run must not reach the Hub")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_network)
    out, record = exported
    assert main(["space", "push", "--repo-id", "me/medsynth", "--folder", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "checkpoints/brain_mri/classifier/model.safetensors" in text
    assert f"would send {record['files']} files" in text
    assert main(["push", "--checkpoint", str(SHIPPED / "covid_ct" / "classifier"), "--repo-id", "me/covid",
                 "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["files"] >= 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_exported_space_starts_alone_and_answers_classify(exported, tmp_path):
    from gradio_client import Client, handle_file

    out, _ = exported
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSYNTH_")}
    env.update(SPACE_ID="me/medsynth", GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH="")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=out, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path))
        label, summary = client.predict(handle_file(str(out / "examples" / "brain_mri" / "glioma_00010.jpg")),
                                        api_name="/classify")
        assert label["label"] == "glioma" and "real-trained classifier" in summary
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_wheel_installs_into_a_fresh_environment(tmp_path):
    """Build the wheel, install it without dependencies into a new virtual environment that reuses this one's
    packages, and run the installed command away from the repository."""
    import sysconfig
    import venv

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("medsynth-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "medsynth/io.py" in names and not any(n.startswith("checkpoints/") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Python: >=3.11" in metadata and "Requires-Dist: torch>=" in metadata
    assert "Requires-Dist: gradio" in metadata and 'extra == "app"' in metadata
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_reuse.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # this venv's packages, after its own
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True, cwd=tmp_path)
    env = dict(os.environ, MEDSYNTH_CHECKPOINTS=str(SHIPPED), HF_HUB_OFFLINE="1", PYTHONPATH="")
    where = subprocess.run([str(python), "-c", "import medsynth; print(medsynth.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(env_dir))  # the installed copy, not the repository
    command = env_dir / "bin" / "medsynth"
    assert subprocess.run([str(command), "--help"], capture_output=True, env=env, cwd=tmp_path).returncode == 0
    proc = subprocess.run([str(command), "classify", "--checkpoint", str(SHIPPED / "brain_mri" / "classifier"),
                           str(EXAMPLE), "--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["results"][0]["class"] == "glioma"

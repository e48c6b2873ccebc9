"""Nothing unsafe gets in: no unpickling, no shell, training paths confined to the data root, uploads in a
private folder, and the file route serves only what the app serves."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_shell_and_no_unpickling_anywhere_in_the_code():
    sources = [*sorted((ROOT / "medsynth").rglob("*.py")), ROOT / "app.py"]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for bad in (r"shell=True", r"os\.system\(", r"os\.popen\(", r"pickle\.loads?\(", r"(?<![.\w])eval\(",
                    r"(?<![.\w])exec\("):
            assert not re.search(bad, text), f"{path.name}: {bad}"
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path.name}: {call}"


def test_imagenet_weights_load_through_the_restricted_unpickler(monkeypatch):
    import torch

    from medsynth.classify import create_classifier

    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    _, source = create_classifier("tf_efficientnet_lite0", 2, 1, pretrained=True)
    assert source is not None and seen == [True]


def test_uploads_live_in_a_private_folder():
    import app  # noqa: F401  (importing the app sets GRADIO_TEMP_DIR when the operator has not)

    folder = Path(os.environ["GRADIO_TEMP_DIR"])
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_tiny):
    """The app on loopback with a tiny classifier and a data root holding a link that points out of it."""
    import app as app_module
    from medsynth import service

    checkpoints = tmp_path_factory.mktemp("checkpoints")
    shutil.copytree(trained_tiny[0], checkpoints / "all_blood" / "classifier")
    data_root = tmp_path_factory.mktemp("data_root")
    shutil.copytree(trained_tiny[1], data_root / "blood")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(trained_tiny[1], outside / "blood")
    os.symlink(outside / "blood", data_root / "escape")
    demo = app_module.build_app(service.ModelStore(checkpoints), data_root=data_root,
                                jobs_dir=tmp_path_factory.mktemp("jobs"), models_dir=tmp_path_factory.mktemp("m"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", checkpoints, outside
    demo.close()


def test_file_route_serves_nothing_outside_the_app(served):
    import httpx

    url, checkpoints, _ = served
    config = checkpoints / "all_blood" / "classifier" / "config.json"
    for target in ("/etc/passwd", "../../../../etc/passwd", "%2Fetc%2Fpasswd", str(config), str(ROOT / "app.py"),
                   str(ROOT / "checkpoints" / "brain_mri" / "classifier" / "config.json")):
        response = httpx.get(f"{url}gradio_api/file={target}", timeout=10)
        assert response.status_code in (403, 404), (target, response.status_code)
        assert "root:" not in response.text and '"arch"' not in response.text


def test_training_paths_stay_inside_the_data_root_through_the_api(served):
    from gradio_client import Client

    url, _, outside = served
    client = Client(url, verbose=False, analytics_enabled=False)
    for folder in ("../outside", "/etc", str(outside / "blood"), "escape", "blood/../../"):
        with pytest.raises(Exception, match="outside the data root"):
            client.predict("classifier", "all_blood", folder, 1, 1, 4, 0, api_name="/train_start")
    for name in ("../up", "a/b", ".hidden", "x" * 101, "$(whoami)", "real-trained", "classifier"):
        with pytest.raises(Exception, match="output name|already exists"):
            client.predict("classifier", "all_blood", "blood", 1, 1, 4, 0, "none (ImageNet / from scratch)", name,
                           api_name="/train_start")
    client.close()

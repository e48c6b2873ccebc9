"""Every entry point against one corpus of good, odd and bad files (tests/corpus.py): the Python API, the
command line, the app's service layer and the launched app through gradio_client. Good files load
everywhere; each bad one gets one message that names the file by its own name and says what is wrong,
never a traceback or a server path, and the app keeps serving."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket

import numpy as np
import pytest

from medsynth.errors import ImageLoadError, MedsynthError

from corpus import build_corpus, message_pattern


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def app_root(tmp_path_factory, trained_tiny):
    root = tmp_path_factory.mktemp("checkpoints")
    shutil.copytree(trained_tiny[0], root / "all_blood" / "classifier")
    return root


def test_python_api(corpus, trained_tiny):
    from medsynth.classify import load_classifier
    from medsynth.io import load_image

    clf = load_classifier(trained_tiny[0])
    for case in corpus:
        if case.error is None:
            image = load_image(case.path, 3)
            assert image.dtype == np.uint8 and image.shape[2] == 3 and min(image.shape[:2]) >= 16, case.name
            assert clf.predict_proba(image).shape == (1, 4)
        else:
            with pytest.raises(ImageLoadError, match=message_pattern(case)):
                load_image(case.path, 3)


def test_command_line(corpus, trained_tiny):
    from medsynth.cli import main

    good = [str(c.path) for c in corpus if c.error is None]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["classify", "--checkpoint", str(trained_tiny[0]), "--json", *good]) == 0
    import json

    assert len(json.loads(out.getvalue().strip().splitlines()[-1])["results"]) == len(good)
    for case in (c for c in corpus if c.error is not None):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            assert main(["classify", "--checkpoint", str(trained_tiny[0]), str(case.path)]) == 2, case.name
        text = err.getvalue()
        assert re.search(message_pattern(case), text) and "Traceback" not in text, text


def test_app_service_names_the_file_only(corpus, app_root):
    from medsynth import service

    store = service.ModelStore(app_root)
    for case in corpus:
        if case.error is None:
            probs, _ = service.assess(store, str(case.path), "all_blood", "real-trained")
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        else:
            with pytest.raises(MedsynthError) as caught:
                service.assess(store, str(case.path), "all_blood", "real-trained")
            message = str(caught.value)
            assert re.fullmatch(message_pattern(case) + ".*", message, re.S), message
            assert str(case.path.parent) not in message  # its own name, not where the server keeps it


def test_launched_app_through_gradio_client(corpus, app_root, tmp_path):
    """Uploads through the real server: good files classify, bad ones get their message, the app keeps serving."""
    from gradio_client import Client, handle_file

    import app as app_module
    from medsynth import service

    demo = app_module.build_app(service.ModelStore(app_root), jobs_dir=tmp_path / "jobs", models_dir=tmp_path / "m")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "dl"),
                        analytics_enabled=False)
        for case in corpus:
            if case.path.is_dir() or case.path.is_symlink():
                continue  # nothing to upload: a browser cannot send a folder or a dangling link
            if case.error is None:
                label, summary = client.predict(handle_file(str(case.path)), api_name="/classify")
                assert len(label["confidences"]) == 4, case.name
            else:
                with pytest.raises(Exception) as caught:
                    client.predict(handle_file(str(case.path)), api_name="/classify")
                message = str(caught.value)
                assert re.match(message_pattern(case), message), message  # starts with the file's own name
                assert os.environ["GRADIO_TEMP_DIR"] not in message and str(case.path) not in message, message
        # the server is still there and answers bad numbers through the API with the field's name
        image = handle_file(str(corpus[0].path))
        for kwargs, message in [
            ({"lime_seed": "abc"}, "LIME seed must be a number, got 'abc'"),
            ({"lime_seed": "nan"}, "LIME seed must be a finite number"),
            ({"lime_seed": -1}, "LIME seed must be at least 0, got -1"),
            ({"lime_seed": 2.5}, "LIME seed must be a whole number, got 2.5"),
            ({"lime_seed": 1e300}, "LIME seed must be between 0 and 4294967295"),
            ({"lime_seed": 10**400}, "LIME seed is far too large"),
            ({"classifier": "../../etc"}, "the classifier must be one model name from the list, got '../../etc'"),
            ({"classifier": ["x"]}, "the classifier must be one model name from the list"),
        ]:
            with pytest.raises(Exception, match=re.escape(message)):
                client.predict(image, **kwargs, api_name="/explain")
        label, _ = client.predict(handle_file(str(corpus[0].path)), api_name="/classify")
        assert len(label["confidences"]) == 4
        client.close()
    finally:
        demo.close()

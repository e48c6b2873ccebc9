"""Deploying medsynth as a Hugging Face Space, and pushing checkpoints to the Hub.

``export(out)`` writes a folder that is a complete Gradio Space: ``app.py``, the ``medsynth`` package, the
shipped checkpoints, the example scans, the shipped reports (``benchmarks/results``), a README whose front
matter configures the Space, a ``requirements.txt`` for CPU Space hardware (CPU torch wheels from
PyTorch's CPU index) and a ``.gitattributes`` that sends every binary through git LFS. ``push(folder,
repo_id)`` creates the Space if needed and uploads the folder with ``upload_folder`` (which handles large
files), with the token the user already has (``HF_TOKEN`` or ``hf auth login``). ``push_checkpoint`` uploads
one checkpoint folder (weights, config, card, LICENSE.md) to a model repository.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import MedsynthError

ROOT = Path(__file__).resolve().parent.parent
#: Binary files that go through git LFS in the Space repository (the Hub refuses large files without it).
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.npz", "*.npy", "*.png", "*.jpg", "*.jpeg",
                "*.gif", "*.webp", "*.tif", "*.tiff", "*.dcm", "*.nii", "*.nii.gz", "*.zip", "*.pdf")
#: Runtime pins replaced for CPU Space hardware: PyTorch's CPU wheels (no CUDA libraries, ~1 GB less).
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: The Space's README: its front matter configures the Space (SDK, version, entry point, hardware).
SPACE_README = """---
title: medsynth
emoji: 🩻
colorFrom: indigo
colorTo: gray
sdk: gradio
sdk_version: {gradio}
app_file: app.py
python_version: "3.11"
suggested_hardware: cpu-basic
pinned: false
license: apache-2.0
short_description: Synthetic medical images, CNNs trained on them, LIME/Grad-CAM
---

# medsynth

Synthetic medical images from class-conditional diffusion models, CNN classifiers trained on them, and
LIME / Grad-CAM explanations of what those classifiers see, for brain tumour MRI, acute lymphoblastic
leukaemia blood smears and SARS-CoV-2 chest CT. The models were trained on a 2-core CPU; their cards are in
the app's About tab and under `checkpoints/`.

**Research use only. medsynth is not a medical device and must not be used for diagnosis.**

Exported by `python -m medsynth space export` (medsynth {version}).
"""


def _gradio_version() -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip().lower().startswith("gradio=="):
            return line.split("==", 1)[1].strip()
    raise MedsynthError("requirements.txt pins no gradio version; the Space's sdk_version needs one")


def space_requirements() -> str:
    """requirements.txt for a CPU Space: the repository's pins with torch/torchvision from the CPU index."""
    lines = [f"# CPU Space hardware: PyTorch's CPU wheels (no CUDA libraries); everything else as pinned in medsynth",
             f"--extra-index-url {CPU_INDEX}"]
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name = line.split("==", 1)[0].strip().lower()
        if name in ("torch", "torchvision") and "==" in line:
            lines.append(f"{line.strip()}+cpu")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def gitattributes() -> str:
    return "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".staging-*", "*.tmp"))


def export(out: str | Path, checkpoints: str | Path | None = None, overwrite: bool = False) -> dict:
    """Write a ready Space folder to ``out``; returns {"out", "files", "bytes", "largest"}."""
    from . import __version__

    out = Path(out)
    checkpoints = Path(checkpoints) if checkpoints else ROOT / "checkpoints"
    if not (checkpoints.is_dir() and any(checkpoints.glob("*/classifier/config.json"))):
        raise MedsynthError(f"{checkpoints} holds no shipped checkpoints (<domain>/classifier/...); export from a "
                            "clone of the repository, or pass --checkpoints")
    if out.exists():
        if not overwrite:
            raise MedsynthError(f"{out} exists; choose a new folder or pass --overwrite")
        if (out / "medsynth").resolve() == (ROOT / "medsynth").resolve() or out.resolve() == ROOT:
            raise MedsynthError(f"{out} is the repository itself; choose a folder outside it")
        shutil.rmtree(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shutil.copy2(ROOT / "app.py", staging / "app.py")
        _copy_tree(ROOT / "medsynth", staging / "medsynth")
        _copy_tree(checkpoints, staging / "checkpoints")
        _copy_tree(ROOT / "examples", staging / "examples")
        if (ROOT / "benchmarks" / "results").is_dir():
            _copy_tree(ROOT / "benchmarks" / "results", staging / "benchmarks" / "results")
        (staging / "README.md").write_text(SPACE_README.format(gradio=_gradio_version(), version=__version__))
        (staging / "requirements.txt").write_text(space_requirements())
        (staging / ".gitattributes").write_text(gitattributes())
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(p for p in out.rglob("*") if p.is_file())
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in files}
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    return {"out": str(out), "files": len(files), "bytes": sum(sizes.values()), "largest": largest}


def listing(folder: str | Path) -> list[tuple[str, int]]:
    """(relative path, bytes) of every file ``upload_folder`` would send."""
    folder = Path(folder)
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*")
                  if p.is_file() and ".git" not in p.relative_to(folder).parts)


def push(folder: str | Path, repo_id: str, repo_type: str = "space", private: bool = False,
         dry_run: bool = False, message: str = "medsynth upload") -> dict:
    """Create the repository if needed and upload ``folder``; with ``dry_run``, only list what would go."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedsynthError(f"{folder}: no such folder (for a Space, run 'python -m medsynth space export {folder}')")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise MedsynthError(f"--repo-id must be OWNER/NAME, got {repo_id!r}")
    files = listing(folder)
    record = {"repo_id": repo_id, "repo_type": repo_type, "files": len(files), "bytes": sum(s for _, s in files),
              "dry_run": dry_run}
    if dry_run:
        return {**record, "listing": files}
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise MedsynthError("HF_HUB_OFFLINE=1 forbids uploading; run with HF_HUB_OFFLINE=0 (and a network)")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        extra = {"space_sdk": "gradio"} if repo_type == "space" else {}
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **extra)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                                   commit_message=message, ignore_patterns=[".git/*", "*.partial/*"])
    except HfHubHTTPError as exc:
        raise MedsynthError(f"the Hub refused the upload to {repo_id} ({exc}); is your token (HF_TOKEN or "
                            "`hf auth login`) allowed to write there?") from None
    return {**record, "url": str(url), "commit": getattr(commit, "oid", None)}


def push_checkpoint(checkpoint: str | Path, repo_id: str, private: bool = False, dry_run: bool = False) -> dict:
    """Upload one checkpoint folder (its card becomes the model repository's README)."""
    checkpoint = Path(checkpoint)
    if not ((checkpoint / "config.json").is_file() or (checkpoint / "model_index.json").is_file()):
        raise MedsynthError(f"{checkpoint} is not a medsynth checkpoint (no config.json or model_index.json)")
    return push(checkpoint, repo_id, repo_type="model", private=private, dry_run=dry_run,
                message=f"medsynth checkpoint {checkpoint.name}")

"""Where a checkpoint comes from: a local folder, or a Hugging Face Hub repository named
``hf://OWNER/NAME[/SUBFOLDER][@REVISION]``, downloaded with ``snapshot_download`` into the standard Hugging
Face cache (``HF_HOME`` / ``HF_HUB_CACHE``). Nothing is fetched unless a Hub id is named and the machine is
online; with ``HF_HUB_OFFLINE=1`` a cached id resolves from the cache, an uncached one gets a message.

``resolve`` is what every ``--checkpoint``, ``--diffusion``, ``--base``, ``--upsampler`` and
``MEDSYNTH_CHECKPOINTS`` go through; a missing local folder gets a message that says where medsynth's
shipped models are (the repository's ``checkpoints/``, which ``pip install`` does not include).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import MedsynthError

PREFIX = "hf://"
_SPEC = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?P<sub>(?:/[\w.-]+)*)(?:@(?P<rev>[\w./-]+))?$")


def is_hub_id(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def parse(spec: str) -> tuple[str, str, str | None]:
    """``hf://OWNER/NAME/SUB/FOLDER@REV`` -> (repo_id, subfolder or "", revision or None)."""
    match = _SPEC.match(spec.strip())
    if not match or ".." in spec:
        raise MedsynthError(f"{spec!r} is not a Hub id; expected hf://OWNER/NAME[/SUBFOLDER][@REVISION], "
                            "e.g. hf://someone/medsynth-brain_mri/classifier")
    return match["repo"], match["sub"].strip("/"), match["rev"]


def _cache_dir() -> str | None:
    """The hub cache as the environment says now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def from_hub(spec: str) -> Path:
    """Download (or find in the cache) a Hub checkpoint; the local folder of its files."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    repo_id, sub, revision = parse(spec)
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        root = snapshot_download(repo_id, revision=revision, allow_patterns=[f"{sub}/*"] if sub else None,
                                 cache_dir=_cache_dir(), local_files_only=offline)
    except LocalEntryNotFoundError:
        raise MedsynthError(f"{spec}: not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it; "
                            "run once with HF_HUB_OFFLINE=0 (and a network), or use a local folder") from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise MedsynthError(f"{spec}: no such Hub repository, or it is private or gated and your token "
                            "(HF_TOKEN or `hf auth login`) has no access") from None
    except RevisionNotFoundError:
        raise MedsynthError(f"{spec}: the repository has no revision {revision!r}") from None
    except (OSError, ValueError) as exc:  # network errors, a broken cache
        raise MedsynthError(f"{spec}: cannot be fetched from the Hub ({exc})") from None
    path = Path(root) / sub if sub else Path(root)
    if not path.is_dir():
        raise MedsynthError(f"{spec}: the repository {repo_id} has no folder {sub!r}")
    return path


def missing(path: Path, what: str = "checkpoint") -> str:
    """The message for a local checkpoint folder that does not exist."""
    text = f"{path}: no such {what} folder"
    if "checkpoints" in Path(path).parts:
        text += ("; medsynth's shipped models are in the repository's checkpoints/ folder, which `pip install` "
                 "does not include: work in a clone of the repository (with `git lfs pull`), set "
                 "MEDSYNTH_CHECKPOINTS to a folder holding <domain>/<model>/, or name a Hub id "
                 "(hf://OWNER/NAME[/SUBFOLDER])")
    return text


def resolve(name, what: str = "checkpoint") -> Path:
    """A checkpoint name (a folder, or ``hf://...``) -> an existing local folder, or a clear message."""
    if is_hub_id(str(name)):
        return from_hub(str(name))
    path = Path(name)
    if not path.exists():
        raise MedsynthError(missing(path, what))
    return path

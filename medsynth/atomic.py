"""Atomic file writes: write to a temporary file in the target folder, then rename over the target.

A crash or Ctrl-C mid-write leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb+") as fh:  # on disk before the rename, so a crash leaves old or new
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2) + "\n")


def write_with(target: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomically write ``target`` with ``writer(tmp_path)`` (e.g. safetensors' ``save_file``)."""
    with atomic_path(target) as tmp:
        writer(tmp)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside ``target``; on success it replaces ``target`` whole.

    The caller decides whether an existing ``target`` may be replaced. A failure inside the block
    removes the temporary folder and leaves ``target`` as it was; an existing ``target`` is moved
    aside before the new folder is renamed in, so it is never half replaced.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give it a plain mkdir's permissions
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.rename(target, old / "set")
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old / "set", target)  # put the old folder back whole
                old.rmdir()
                raise
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable(folder: str | os.PathLike, need_mb: float = 0.0, option: str = "--out") -> None:
    """Fail before any work if ``folder`` cannot be created and written, or its disk has too little room.

    Args:
        folder: the output folder (created if missing, with its parents).
        need_mb: the free space the work needs at least, in MB (0: any).
        option: the command-line option that named the folder, for the message.

    Raises:
        MedsynthError: saying which folder, what failed and what to do.
    """
    from .errors import MedsynthError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".medsynth-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise MedsynthError(f"{option} {folder}: cannot write there ({reason}); choose a folder you can write to") from None
    free_mb = shutil.disk_usage(folder).free / 1e6
    if free_mb < need_mb:
        raise MedsynthError(f"{option} {folder}: only {free_mb:.0f} MB free on its disk, and this run needs about "
                            f"{need_mb:.0f} MB; free some space or choose another folder")

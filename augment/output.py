"""How every stage writes: one atomic-write helper for files and one claim/publish helper for
whole output folders, so a failed or killed stage never leaves a half-written file or folder.

* :func:`atomic_path` yields a temporary name beside the target; the target appears (by rename)
  only when the block ends without an error, with ordinary file modes (0644 less the umask, not
  ``mkstemp``'s 0600).
* :func:`claim_output` refuses an output that exists and is not empty (unless ``overwrite``) and
  returns a fresh temporary sibling folder to build in; :func:`publish` renames it into place.
  Stages that resume in place (train, sample, evaluate) instead keep their own journal or
  checkpoints and write their ``run.json`` last; its presence marks a finished stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from augment.errors import DataError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)``: ``p`` is replaced by ``tmp`` at the end, or
    left untouched (and ``tmp`` removed) if the block raises."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{p.stem}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(data: dict[str, Any], path: str | Path) -> None:
    """Atomic, sorted, indented JSON (anything not JSON-native is written with ``str``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(data: bytes, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def claim_output(out: str | Path, overwrite: bool) -> Path:
    """A fresh temporary folder beside ``out`` (same parent, so relative paths stay valid)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"output `{out}` exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"output `{out}` already exists and is not empty; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def publish(tmp: Path, out: str | Path) -> None:
    """Put a finished temporary folder in place of ``out``."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


@contextlib.contextmanager
def building(out: str | Path, overwrite: bool) -> Iterator[Path]:
    """``with building(out, overwrite) as tmp: ...``: claim, build in ``tmp``, publish; on any
    error the temporary folder is removed and ``out`` is as it was."""
    tmp = claim_output(out, overwrite)
    try:
        yield tmp
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

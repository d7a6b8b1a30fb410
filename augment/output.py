"""How every stage writes: one atomic-write helper for files and one claim/publish helper for
whole output folders, so a failed or killed stage never leaves a half-written file or folder.

* :func:`atomic_path` yields a temporary name beside the target; the target appears (by rename)
  only when the block ends without an error, with ordinary file modes (0644 less the umask, not
  ``mkstemp``'s 0600).
* :func:`claim_output` refuses an output that exists and is not empty (unless ``overwrite``, and
  then only a previous output of the same verb), a symbolic link, and the working directory, its
  parents, home and root; it returns a fresh temporary sibling folder to build in; :func:`publish` renames it into place.
  Stages that resume in place (train, sample, evaluate) instead keep their own journal or
  checkpoints and write their ``run.json`` last; its presence marks a finished stage.
* :func:`discard` undoes a stage that failed in place in an output that was new.
* :func:`read_json` reads a record a stage wrote; a corrupt one is a :class:`DataError` naming it;
  :func:`read_csv` does the same for a table a stage wrote.
* :class:`StageResult` is what every stage function returns: its folder, record and summary.

A write that fails for lack of space raises ``OSError(ENOSPC)`` naming the file being written
(not its temporary name); the CLI turns it into one line.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from augment.errors import DataError

FULL = (errno.ENOSPC, errno.EDQUOT)  # out of disk space or quota


@dataclass(frozen=True)
class StageResult:
    """What a stage made: its output folder, its record (``run.json``, ``audit.json`` for the
    audit) and a short human summary (what the CLI prints)."""

    out: Path
    record: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


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
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in FULL:
            raise OSError(exc.errno, os.strerror(exc.errno), str(p)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON ``null``): what cannot be
    computed is absent, never a number (``NaN`` is not JSON, and readers would average it in)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return _finite(value.item())
    return value


def write_json(data: dict[str, Any], path: str | Path) -> None:
    """Atomic, sorted, indented JSON (anything not JSON-native is written with ``str``; a NaN or
    infinite float as ``null``)."""
    text = json.dumps(_finite(data), indent=2, sort_keys=True, default=str, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(data: bytes, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_json(path: str | Path, what: str = "record") -> dict[str, Any]:
    """A JSON object a stage wrote (``run.json``, ``audit.json`` ...); a missing, unreadable or
    non-object file is a DataError naming it."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} `{p}` does not exist")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{what} `{p}` is not readable JSON (corrupt or truncated)") from None
    if not isinstance(data, dict):
        raise DataError(f"{what} `{p}` is not a JSON object (corrupt or from another tool)")
    return data


def record_of(out: str | Path, name: str = "run.json") -> dict[str, Any]:
    """The record ``name`` in a stage's folder ``out`` ({} while the stage has not finished)."""
    path = Path(out) / name
    return read_json(path) if path.is_file() else {}


def read_csv(path: str | Path, what: str = "table", **options: Any):
    """A CSV table a stage wrote (pandas ``read_csv`` ``options``); a missing, empty or unparsable
    file is a DataError naming it."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} `{p}` does not exist")
    try:
        return pd.read_csv(p, **options)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        raise DataError(f"{what} `{p}` is not a readable CSV table (corrupt or truncated)") from None


def resumable_output(out: str | Path, marker: str, what: str) -> bool:
    """The first check of every stage that resumes in place: ``out`` must be absent, an empty
    folder, or a folder holding ``marker`` (the file that stage writes first, e.g. its config).
    Returns True when ``out`` is new (absent or empty); a file, or a folder of something else, is
    a DataError naming ``what`` the folder should be."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"output `{out}` exists and is not a folder; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return True
    if not (out / marker).is_file():
        raise DataError(f"`{out}` is not empty and is not {what}; choose another --out")
    return False


def _refuse_dangerous(out: Path) -> None:
    """A folder a stage builds and then renames into place must not be a symbolic link (the
    rename would replace the link, and ``--overwrite`` would delete through it), nor the
    working directory, one of its parents, the home folder or the root (``--out .
    --overwrite`` would delete everything the user is standing in)."""
    if out.is_symlink():
        raise DataError(f"output `{out}` is a symbolic link (to `{os.path.realpath(out)}`); give the folder itself as --out")
    real = Path(os.path.realpath(out))
    cwd = Path.cwd().resolve()
    reason = ("the root folder" if real == Path(real.anchor) else "your home folder" if real == Path.home().resolve()
              else "the working directory" if real == cwd else "a parent of the working directory" if real in cwd.parents
              else None)
    if reason is not None:
        raise DataError(f"output `{out}` is {reason}; a stage replaces its whole output folder, so choose a new sub-folder as --out")


def claim_output(out: str | Path, overwrite: bool, verb: str) -> Path:
    """A fresh temporary folder beside ``out`` (same parent, so relative paths stay valid).
    ``overwrite`` replaces only a previous output of the same ``verb`` (its ``run.json`` says
    so); any other non-empty folder is refused, as are the folders :func:`_refuse_dangerous`
    names. When this process holds the lock of ``out`` (:mod:`augment.lock`), the temporary
    folders of killed runs are removed first: nobody else can be building ``out``."""
    from augment.lock import holds

    out = Path(out)
    _refuse_dangerous(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"output `{out}` exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"output `{out}` already exists and is not empty; choose another --out or pass --overwrite")
        try:
            stage = record_of(out).get("stage")
        except DataError:  # a corrupt record: not recognisably ours
            stage = None
        if stage != verb:
            made_by = f"`augment {stage}`" if isinstance(stage, str) else "augment (it has no readable run.json)"
            raise DataError(f"output `{out}` was not made by `augment {verb}` but by {made_by}; --overwrite replaces only "
                            f"a previous output of the same verb, so choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    if holds(out):
        for stale in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def publish(tmp: Path, out: str | Path) -> None:
    """Put a finished temporary folder in place of ``out``."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def discard(out: str | Path, existed: bool) -> None:
    """Undo a failed stage that wrote in place into an output that was new: remove ``out`` when
    it did not exist before, or empty it again when it was an empty folder."""
    out = Path(out)
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in list(out.iterdir()) if out.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


@contextlib.contextmanager
def building(out: str | Path, overwrite: bool, verb: str) -> Iterator[Path]:
    """``with building(out, overwrite, "prepare") as tmp: ...``: claim (:func:`claim_output`),
    build in ``tmp``, publish; on any error the temporary folder is removed and ``out`` is as it was."""
    tmp = claim_output(out, overwrite, verb)
    try:
        yield tmp
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""One lock per output folder, so two augment processes never write into the same output at once.

The lock is an exclusive ``flock`` on a sibling file ``.<name>.lock`` beside the output folder
(beside, not inside, so ``prepare``'s build-then-rename and ``--overwrite`` replace the folder
freely). The file holds JSON naming the holder (pid, host, verb, start time, command line), so a
second process fails at once with one line that says who has the output. The kernel drops a
``flock`` when its process dies, so a lock left by a killed run is stale and simply taken over;
a clean exit also removes the file.

Under a multi-process launcher (torchrun, ``accelerate launch``: ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE`` and ``MASTER_ADDR``/``MASTER_PORT`` in the environment, :func:`augment.seeding.rank_zero`)
only rank 0 locks: the ranks of one launch share the output by design and are not rivals. A
process may take the lock of an output it already holds again (nested stages of ``augment run``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from augment.errors import AugmentError
from augment.seeding import rank_zero

_HELD: dict[str, int] = {}  # lock file -> how many times this process holds it


class LockError(AugmentError):
    """Another process is writing the same output."""


def lock_path(out: str | Path) -> Path:
    """The lock file of output folder ``out``: ``<parent>/.<name>.lock`` of the real folder (every
    symbolic link resolved, so two spellings of one folder, or a link to it, share one lock)."""
    out = Path(os.path.realpath(out))
    return out.parent / f".{out.name}.lock"


def holds(out: str | Path) -> bool:
    """Whether this process holds the lock of ``out``."""
    return str(lock_path(out)) in _HELD


def _holder(path: Path) -> str:
    """Who holds ``path``, from its JSON (the holder writes it just after taking the lock)."""
    for _ in range(50):
        try:
            info = json.loads(path.read_text())
            return (f"`augment {info['verb']}` (pid {info['pid']} on host {info['host']}, "
                    f"started {info['started']})")
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.01)
    return "another process (it has not recorded itself yet)"


def _open_locked(path: Path, out: Path) -> int:
    """An fd holding an exclusive flock on ``path`` (the file at that path now, not an unlinked one)."""
    while True:
        try:
            # O_NOFOLLOW: a lock "file" that is a link planted in a shared folder must not make us
            # truncate its target; O_NONBLOCK: a FIFO planted there must not hang us.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except FileNotFoundError:  # the parent was just removed by a releasing process
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise LockError(f"lock file `{path}` of output `{out}` is not a regular file (a symbolic link, folder or "
                                f"device); refusing to use it: remove it if nothing else needs it") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LockError(f"lock file `{path}` of output `{out}` is not a regular file (a FIFO or device); refusing to "
                            f"use it: remove it if nothing else needs it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise LockError(f"output `{out}` is in use by {_holder(path)}; wait for it to finish or choose another "
                            f"output (lock file `{path}`)") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file after we opened it: take the new one


@contextlib.contextmanager
def output_lock(out: str | Path, verb: str) -> Iterator[None]:
    """``with output_lock(out, "train"): ...``: hold the lock of output folder ``out`` (a
    :class:`LockError` naming the holder if another process has it). Reentrant in one process;
    a no-op on ranks other than 0."""
    if not rank_zero():
        yield
        return
    path = lock_path(out)
    key = str(path)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    made = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(path, Path(out))
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "verb": verb,
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[key] = 1
        yield
    finally:
        _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it: a process that opened it meanwhile sees another inode
        os.close(fd)
        for parent in made:  # folders made only to hold the lock file, when nothing else went there
            with contextlib.suppress(OSError):
                parent.rmdir()


def locked(out_of: Callable[..., str | Path], verb: str) -> Callable:
    """Decorator: run the function holding the lock of the output folder ``out_of(*args, **kwargs)``."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with output_lock(out_of(*args, **kwargs), verb):
                return fn(*args, **kwargs)
        return inner
    return wrap

"""The run directory on disk: config.yaml, metrics.jsonl (`metrics_file`), checkpoints/.
Never overwritten.

A run directory has one writer: the process that trains it holds an exclusive lock
(`flock`) on its `.lock` file for the run's life. The OS releases the lock when that process
ends, however it ends (kill -9 included), so a lock is never stale; the file itself stays
and names the last holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.errors import UserError

LOCK_FILE = ".lock"


def fresh_run_dir(base: Path) -> Path:
    """`base` if it is new or empty, else the first free `base-2`, `base-3`, ...

    A directory is claimed by creating its lock file exclusively, so two processes starting
    at once never get the same one.
    """
    candidate, number = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            if not any(candidate.iterdir()):
                os.close(os.open(candidate / LOCK_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return candidate
        except FileExistsError:  # a file of that name, or another process claimed it first
            pass
        except OSError as err:
            raise UserError(
                f"trainer.out_dir: cannot create the run directory {str(candidate)!r} "
                f"({err.strerror})"
            ) from None
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")


@contextlib.contextmanager
def lock_run_dir(run_dir: Path) -> Iterator[None]:
    """Own `run_dir` while the block runs; a UserError naming the holder if a live process
    (on this host, or another sharing the file system) owns it. Under torchrun, rank 0 alone."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock to take
        yield
        return
    path = run_dir / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(in_use(run_dir, _holder(path))) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(holder) + "\n").encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def lock_holder(run_dir: Path) -> str | None:
    """Who owns `run_dir` now ('pid N on host H, since T'), or None when no live process does."""
    try:
        import fcntl

        descriptor = os.open(run_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder(run_dir / LOCK_FILE)
    finally:
        os.close(descriptor)  # and with it the shared lock, if it was taken


def in_use(run_dir: Path, holder: str) -> str:
    """The error for a second writer of a run directory."""
    return (
        f"{run_dir}: in use by another trainer process ({holder}); a run directory has one "
        "writer: wait for that process to end (or stop it), or start a run of another name"
    )


def _holder(path: Path) -> str:
    """'pid N on host H, since T' from a lock file, or what is known of it."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
        return f"pid {holder['pid']} on host {holder['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its pid and host are not yet written in {path}"


def check_out_dir(path: Path) -> list[str]:
    """Problems that would stop a run directory being written at `path`: under a file, in a
    read-only or unwritable directory, on a file system such as /proc. Probes by creating
    and removing a temporary directory in `path` (or its nearest existing parent)."""
    where = f"trainer.out_dir: {str(path)!r}"
    try:
        if path.exists() and not path.is_dir():
            return [f"{where} is a file, not a directory"]
        existing = path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            return [f"{where} is under {str(existing)!r}, which is a file, not a directory"]
        os.rmdir(tempfile.mkdtemp(prefix=".trainer-check-", dir=existing))
    except OSError as err:
        return [f"{where}: cannot create a run directory there ({err.strerror})"]
    return []


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint belongs to (`<run>/checkpoints/x.pt`), if any."""
    run = checkpoint.parent.parent
    if checkpoint.parent.name == "checkpoints" and (run / "config.yaml").is_file():
        return run
    return None


def replace_config(run_dir: Path, text: str, *, step: int) -> Path | None:
    """Make `text` the run's config.yaml (a resumed run's config in force). A config.yaml
    that differs is kept as `config-step<step>.yaml` (the step it was replaced at; `-2`...
    when that name is taken); returns that path, or None when nothing changed."""
    current = run_dir / "config.yaml"
    try:
        old = current.read_bytes()
    except OSError:
        old = None
    if old == text.encode("utf-8"):
        return None
    kept = None
    if old is not None:
        kept, number = run_dir / f"config-step{step}.yaml", 1
        while kept.exists():
            number += 1
            kept = run_dir / f"config-step{step}-{number}.yaml"
        kept.write_bytes(old)
    temporary = run_dir / f".config.yaml.{os.getpid()}.tmp"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, current)
    return kept


def json_kind(value: Any) -> str:
    """What JSON calls a value's type (`array`, `string`, ...)."""
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def json_excerpt(value: Any, limit: int = 40) -> str:
    """A value as JSON, cut to `limit` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

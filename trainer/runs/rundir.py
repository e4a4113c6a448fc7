"""The run directory on disk: config.yaml, metrics.jsonl, checkpoints/. Never overwritten.

A run directory has one writer: the process that trains it holds an exclusive lock
(`flock`) on its `.lock` file for the run's life. The OS releases the lock when that process
ends, however it ends (kill -9 included), so a lock is never stale; the file itself stays
and names the last holder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.errors import TrainingError, UserError

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


class MetricsFile:
    """metrics.jsonl: one JSON object per line, flushed as it is written."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path = path
        # Under torch.distributed only rank 0 writes; the others hold a closed-off writer.
        self._file = open(path, "a", encoding="utf-8") if enabled else None  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        try:
            self._file.write(json.dumps(clean) + "\n")
            self._file.flush()
        except OSError as err:
            raise TrainingError(f"cannot write {self.path}: {err.strerror}") from None

    def cut_after(self, *, step: int, epoch: int) -> int:
        """Drop what a resume from (`step`, `epoch` completed) logs again: records after
        `step`, epoch records of epochs after `epoch`, a torn last line. Returns how many.
        A damaged line is a UserError naming the file and line; the file is left as it is."""
        if self._file is None:
            return 0
        from trainer.runs.listing import is_epoch_record

        kept, dropped = [], 0
        for number, line, record in metrics_lines(self.path):
            if record == TORN:
                dropped += 1
                continue
            if isinstance(record, str):
                raise UserError(
                    f"{self.path}, line {number}: {record}; fix or delete that line, "
                    "then resume again"
                )
            later = record["step"] > step or (is_epoch_record(record) and record["epoch"] > epoch)
            dropped += later
            kept += [] if later else [line + b"\n"]
        if dropped:
            self._file.close()
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            temporary.write_bytes(b"".join(kept))
            os.replace(temporary, self.path)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        return dropped

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl file."""
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


TORN = "cut short (the last line of a killed process)"


def metrics_lines(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any] | str]]:
    """Each line of a metrics.jsonl file as (line number, the line, its record), the record
    replaced by what is wrong with the line when it is not one: TORN for an unfinished last
    line a killed process left. Blank lines are left out."""
    lines = path.read_bytes().split(b"\n")
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        record = _record(line)
        unfinished = index == len(lines) - 1  # no newline after it: its write was cut
        yield index + 1, line, TORN if unfinished and record in UNREADABLE else record


UNREADABLE = ("not UTF-8 text", "not JSON")


def _record(line: bytes) -> dict[str, Any] | str:
    """One metrics.jsonl record: a JSON object with an integer `epoch` and `step` and a number
    (or null, for a value that was not finite) under every other key; else what is wrong."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return UNREADABLE[0]
    except ValueError:
        return UNREADABLE[1]
    if not isinstance(record, dict):
        return f"a JSON {json_kind(record)}, not an object"
    for key in ("epoch", "step"):
        value = record.get(key)
        if key not in record:
            return f"no {key!r} in the record"
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{key} is {json_excerpt(value)}, not an integer"
    for key, value in record.items():
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return f"{key} is {json_excerpt(value)}, not a number"
    return record


def json_kind(value: Any) -> str:
    """What JSON calls a value's type (`array`, `string`, ...)."""
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def json_excerpt(value: Any, limit: int = 40) -> str:
    """A value as JSON, cut to `limit` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Atomic writes of checkpoints, files and directories alike: written under a temporary name
beside the target, fsynced, then put in place by rename.

A file replaces a file in one `os.replace`. A directory (a sharded checkpoint) cannot replace
anything in one rename, so the target is first moved aside to `.<name>.previous`, the new one
renamed in, and the aside removed. A kill between those renames leaves the aside and no
target: `recover` (run by the next save's `clean`) puts it back, and --resume finds it
meanwhile (`moved_aside`). Temporary names end in `.tmp` and are a killed writer's leftovers
when the next save starts (one writer per run directory).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from trainer.errors import TrainingError


def temporary_name(path: Path) -> Path:
    """A name beside `path` unique to this writer (pid and a random suffix), ending in .tmp."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def moved_aside(path: Path) -> Path:
    """Where a checkpoint directory waits while its successor is renamed in."""
    return path.with_name(f".{path.name}.previous")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`; removed, and the OSError turned into a one-line
    TrainingError, if the block fails."""
    temporary = temporary_name(path)
    try:
        yield temporary
    except (OSError, RuntimeError) as err:
        cause = os_error(err)  # torch.save reports a failed write as a RuntimeError
        if cause is None:
            raise
        with contextlib.suppress(OSError):
            delete(temporary)
        raise write_error(path, cause) from None


def write_error(path: Path, cause: BaseException) -> TrainingError:
    """The one-line error of a checkpoint that could not be written."""
    if isinstance(cause, OSError) and cause.strerror:
        reason: object = cause.strerror
    elif isinstance(cause, (OSError, TrainingError)):
        reason = cause
    else:  # not the file system's: say what it was
        reason = f"{type(cause).__name__}: {cause}"
    return TrainingError(
        f"could not write {path}: {reason}; the checkpoints written before are intact"
    )


def os_error(err: BaseException | None) -> OSError | None:
    """The OSError that `err` is, or that it was raised while handling."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def put_in_place(temporary: Path, target: Path) -> None:
    """Rename the complete, fsynced `temporary` to `target`: one os.replace for a file over a
    file; with a directory on either side, `target` moved aside, `temporary` renamed in, the
    aside removed (a kill in between leaves the aside for `recover`)."""
    if not (temporary.is_dir() or target.is_dir()):
        os.replace(temporary, target)
        fsync_dir(target.parent)
        return
    recover(target)
    aside = moved_aside(target)
    if target.exists():
        os.rename(target, aside)
    os.rename(temporary, target)
    fsync_dir(target.parent)
    remove(aside)


def recover(target: Path) -> None:
    """Finish what a killed `put_in_place` left: the aside back as `target` when `target` is
    missing, else the aside removed (`target` is the complete successor)."""
    aside = moved_aside(target)
    if not aside.exists():
        return
    if target.exists():
        remove(aside)
    else:
        os.rename(aside, target)
        fsync_dir(target.parent)


def remove(path: Path) -> None:
    """Remove a checkpoint: a file unlinked; a directory renamed to a temporary name first,
    so a kill while deleting it leaves a leftover for `clean`, never a half checkpoint."""
    if not path.is_dir():
        path.unlink(missing_ok=True)
        return
    doomed = temporary_name(path)
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def delete(path: Path) -> None:
    """A temporary file or directory gone (missing is fine)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def clean(directory: Path) -> None:
    """Before a save: a killed save's temporary files and directories removed, and its
    moved-aside checkpoints put back (or removed where the successor is in place)."""
    for leftover in directory.glob(".*.tmp"):
        delete(leftover)
    for aside in directory.glob(".*.previous"):
        recover(aside.with_name(aside.name[1 : -len(".previous")]))


def copy(source: Path, target: Path) -> None:
    """`target` an atomic copy of the checkpoint `source` (a file, or a directory whose files
    are hard links: checkpoint files are written once and never changed in place, only
    removed, so two names of one file never see a change; copied where links fail)."""
    with writing(target) as temporary:
        if source.is_dir():
            temporary.mkdir()
            for file in source.iterdir():
                try:
                    os.link(file, temporary / file.name)
                except OSError:
                    shutil.copyfile(file, temporary / file.name)
                    fsync_file(temporary / file.name)
            fsync_dir(temporary)
        else:
            shutil.copyfile(source, temporary)
            fsync_file(temporary)
        put_in_place(temporary, target)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())

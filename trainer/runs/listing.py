"""Runs read back from their directories, for `trainer runs`: status, progress, best value.

How a run's status is known: the loop keeps `status.json` (`status_recorded`): `running`
while it trains, then `finished`, `stopped` (SIGINT/SIGTERM, resumable) or `failed` with the
reason. A running process holds a lock on `<run dir>/.lock` (`rundir.lock_run_dir`);
`running` in status.json with nobody holding that lock means the process died without a
word (killed): `failed`. Runs
written before status.json existed are judged from metrics.jsonl: all epochs done is
`finished`, a NaN loss last is `failed`, anything else is `stopped`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.config import flatten
from trainer.errors import Interrupted, UserError
from trainer.runs.metrics_file import is_epoch_record, metric_names, read_records
from trainer.runs.rundir import LOCK_FILE, json_excerpt, json_kind, lock_holder

STATUS_FILE = "status.json"
NOT_COMPARED = ("name", "trainer.out_dir")  # differ between any two runs by construction


# ---------------------------------------------------------------- written by the loop


STATUS_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {  # key: (types, what it must be)
    "status": ((str,), "a string"),
    "reason": ((str, type(None)), "a string or null"),
    "step": ((int,), "an integer"),
    "started": ((int, float), "a number"),
    "ended": ((int, float, type(None)), "a number or null"),
    "seconds": ((int, float), "a number"),
    "pid": ((int,), "an integer"),
    "host": ((str,), "a string"),
}


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json of a run, or {} for a run without one; a damaged one is a UserError
    naming the file and what is wrong."""
    path = run_dir / STATUS_FILE
    try:
        status = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})") from None
    except ValueError:
        raise UserError(f"{path}: not JSON text") from None
    if not isinstance(status, dict):
        raise UserError(f"{path}: a JSON {json_kind(status)}, not an object")
    for key, (kinds, wanted) in STATUS_FIELDS.items():
        value = status.get(key)
        if key in status and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise UserError(f"{path}: {key} is {json_excerpt(value)}, not {wanted}")
    return status


def write_status(run_dir: Path, **fields: Any) -> None:
    """Merge `fields` into status.json, atomically (a reader never sees half a file)."""
    status = read_status(run_dir) | fields
    temporary = run_dir / f".{STATUS_FILE}.tmp"
    temporary.write_text(json.dumps(status, indent=2) + "\n", encoding="utf-8")
    temporary.replace(run_dir / STATUS_FILE)


@contextlib.contextmanager
def status_recorded(run_dir: Path, *, enabled: bool, step: Callable[[], int]) -> Iterator[None]:
    """status.json says `running` while the block runs, then how it ended: `finished`,
    `stopped` (Interrupted) or `failed` (any other exception, with its message). `step()`
    gives the training steps done; wall seconds add up over resumed sessions."""
    if not enabled:
        yield
        return
    started = time.time()
    try:
        before = read_status(run_dir).get("seconds", 0.0)
    except UserError as err:  # before anything is written
        raise UserError(
            f"{err.problems[0]}; fix or delete it (the run writes it anew), then resume again"
        ) from None
    write_status(
        run_dir,
        status="running",
        reason=None,
        step=step(),
        started=started,
        ended=None,
        seconds=before,
        pid=os.getpid(),
        host=socket.gethostname(),
    )

    def end(status: str, reason: str | None = None) -> None:
        ended = time.time()
        write_status(
            run_dir,
            status=status,
            reason=reason,
            step=step(),
            ended=ended,
            seconds=before + ended - started,
        )

    try:
        yield
    except Interrupted:
        end("stopped", "interrupted (SIGINT/SIGTERM); resumable from checkpoints/last.pt")
        raise
    except UserError as err:
        end("failed", "; ".join(err.problems))
        raise
    except BaseException as err:
        end("failed", str(err) or type(err).__name__)
        raise
    end("finished")


# ---------------------------------------------------------------- read back


@dataclass
class RunSummary:
    """One row of `trainer runs`."""

    name: str  # the run directory's path under the listed directory
    path: str
    status: str  # finished | stopped | running | failed
    reason: str | None
    epoch: int  # epochs completed (validated)
    epochs: int | None  # configured trainer.epochs
    step: int
    best: dict[str, Any] | None  # monitor, mode, value, epoch
    last: dict[str, float]  # the last epoch's metrics
    seconds: float | None  # wall time, over all sessions
    config: dict[str, Any]  # the config keys that differ between the listed runs
    warnings: list[str] = field(default_factory=list)  # damaged files: what was left out

    @property
    def label(self) -> str:
        """`finished`, `stopped at step N`, `running (step N)` or `failed at step N`."""
        if self.status == "finished":
            return "finished"
        if self.status == "running":
            return f"running (step {self.step})"
        return f"{self.status} at step {self.step}"

    @property
    def group(self) -> str:
        """The directory the run is listed under (a sweep's study), or '' for none."""
        return self.name.rpartition("/")[0]


def find_runs(directory: Path) -> dict[str, Path]:
    """The runs in `directory` by name: `directory` itself if it is a run; else its run
    directories (with a config.yaml), then those one level down, named `<dir>/<run>` (a
    sweep keeps its trials in its study directory: `<study>/trial-0003`)."""
    if not directory.is_dir():
        raise UserError(f"DIR: {directory}: no such directory")
    if _is_run(directory):
        return {directory.resolve().name: directory}
    children = _subdirectories(directory)
    found = {child.name: child for child in children if _is_run(child)}
    for group in (child for child in children if not _is_run(child)):
        found |= {f"{group.name}/{run.name}": run for run in _subdirectories(group) if _is_run(run)}
    return found


def _is_run(directory: Path) -> bool:
    return (directory / "config.yaml").is_file()


def _subdirectories(directory: Path) -> list[Path]:
    """The directories in `directory` by name; none where it cannot be read."""
    try:
        return sorted(path for path in directory.iterdir() if path.is_dir())
    except OSError:
        return []


def read_config(path: Path, *, warn: Callable[[str], None]) -> dict[str, Any]:
    """A run's config.yaml; {} with a warning naming the file (and line) when it is damaged."""
    try:
        config = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except OSError as err:
        problem = f"{path}: cannot read it ({err.strerror})"
    except UnicodeDecodeError:
        problem = f"{path}: not UTF-8 text"
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        problem = f"{path}{where}: not YAML ({getattr(err, 'problem', None) or 'unreadable'})"
    else:
        if config is None or isinstance(config, dict):
            return config or {}
        problem = f"{path}: a {type(config).__name__}, not a mapping of config keys"
    warn(f"{problem}; its settings are not read")
    return {}


def summarize(run_dir: Path, *, name: str | None = None) -> RunSummary:
    """What a run's files say: status, progress, best and last metrics, wall time. Damaged
    files or lines are left out, each with a warning in the summary."""
    from trainer.config import default_mode
    from trainer.runs.monitor import improved_best

    warnings: list[str] = []
    config = read_config(run_dir / "config.yaml", warn=warnings.append)
    records = read_records(run_dir / "metrics.jsonl", warn=warnings.append)
    epochs = [r for r in records if is_epoch_record(r)]
    try:
        saved = read_status(run_dir)
    except UserError as err:
        warnings.append(f"{err.problems[0]}; the run is judged from metrics.jsonl")
        saved = {}
    step = saved.get("step", max((r["step"] for r in records), default=0))
    settings, checkpoint = _section(config, "trainer"), _section(config, "checkpoint")
    monitor = _typed(checkpoint.get("monitor"), str) or "val/loss"
    mode = checkpoint.get("mode") if checkpoint.get("mode") in ("min", "max") else None
    mode = mode or default_mode(monitor)
    best = None
    for record in epochs:
        best = improved_best(best, record, monitor, mode)
    final = epochs[-1] if epochs else {}
    speed_or_lr = ("train/samples_per_s", "lr/")
    last = {k: final[k] for k in metric_names(final) if not k.startswith(speed_or_lr)}
    status, reason = _status(run_dir, saved, records, epochs, settings)
    return RunSummary(
        name=name or run_dir.name,
        path=str(run_dir),
        status=status,
        reason=reason,
        epoch=epochs[-1]["epoch"] if epochs else 0,
        epochs=_typed(settings.get("epochs"), int),
        step=step,
        best=best,
        last=last,
        seconds=_seconds(run_dir, saved),
        config=flatten(config),
        warnings=warnings,
    )


def _section(config: dict[str, Any], key: str) -> dict[str, Any]:
    """A config section, or {} where a damaged config.yaml has something else there."""
    section = config.get(key)
    return section if isinstance(section, dict) else {}


def _typed(value: Any, kind: type) -> Any:
    """`value` if it is a `kind` (not a bool), else None."""
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _status(
    run_dir: Path,
    saved: dict[str, Any],
    records: list[dict[str, Any]],
    epochs: list[dict[str, Any]],
    settings: dict[str, Any],
) -> tuple[str, str | None]:
    holder = lock_holder(run_dir)
    if holder:
        return "running", holder
    if saved.get("status") == "running":
        unlocked = not (run_dir / LOCK_FILE).exists()  # a runner that kept no lock file
        here = saved.get("host") == socket.gethostname()
        if unlocked and here and _process_alive(saved.get("pid")):
            return "running", None
        return "failed", "the process ended without recording how (killed?)"
    if saved.get("status"):
        return saved["status"], saved.get("reason")
    # Written before status.json: what metrics.jsonl shows.
    if records and records[-1].get("train/loss", 0.0) is None:
        return "failed", "train/loss is not finite in the last record"
    done = epochs[-1]["epoch"] if epochs else 0
    max_steps = _typed(settings.get("max_steps"), int)
    steps = max((r["step"] for r in records), default=0)
    if done >= (_typed(settings.get("epochs"), int) or math.inf) or (
        max_steps and steps >= max_steps
    ):
        return "finished", None
    return "stopped", None


def _process_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _seconds(run_dir: Path, saved: dict[str, Any]) -> float | None:
    if saved.get("status") == "running" and saved.get("started"):
        return saved.get("seconds", 0.0) + time.time() - saved["started"]
    if "seconds" in saved:
        return saved["seconds"]
    metrics = run_dir / "metrics.jsonl"  # before status.json: first file to last write
    if not metrics.is_file():
        return None
    return metrics.stat().st_mtime - (run_dir / "config.yaml").stat().st_mtime


def compare(runs: dict[str, Path]) -> tuple[list[RunSummary], list[str]]:
    """A summary per run (by name), each keeping only the config keys whose values differ
    between runs (a key one run lacks differs too); returns the summaries and those keys."""
    summaries = [summarize(run_dir, name=name) for name, run_dir in runs.items()]
    keys = list(dict.fromkeys(k for s in summaries for k in s.config))
    missing = object()
    differing = [
        key
        for key in keys
        if key not in NOT_COMPARED
        and len({json.dumps(s.config.get(key, missing), default=str) for s in summaries}) > 1
    ]
    for summary in summaries:
        summary.config = {key: summary.config.get(key) for key in differing}
    return summaries, differing


def runs_json(summaries: list[RunSummary], differing: list[str]) -> dict[str, Any]:
    """What `trainer runs --json` prints."""
    rows = [asdict(s) | {"label": s.label} for s in summaries]
    return {"runs": rows, "differing_keys": differing}


def runs_table(summaries: list[RunSummary], differing: list[str]) -> Any:
    """The rich table `trainer runs` prints: one row per run, a column per differing key, a
    rule above each directory of runs (a sweep's trials)."""
    from rich.table import Table

    from trainer.runs.report import number

    table = Table(title="runs", title_justify="left")
    for column in ("run", "status", "epoch", "step", "best", "last", "time", *differing):
        table.add_column(column, justify="right" if column in ("epoch", "step") else "left")
    for index, run in enumerate(summaries):
        if index and run.group != summaries[index - 1].group:
            table.add_section()
        best = run.best
        table.add_row(
            run.name,
            run.label,
            f"{run.epoch}/{run.epochs}",
            str(run.step),
            f"{best['monitor']} {number(best['value'])} @{best['epoch']}" if best else "-",
            "  ".join(f"{k} {number(v)}" for k, v in run.last.items()) or "-",
            _duration(run.seconds),
            *(_cell(run.config[key]) for key in differing),
        )
    return table


def _cell(value: Any) -> str:
    """A config value as YAML shows it: strings bare, the rest as JSON (null, lists)."""
    return value if isinstance(value, str) else json.dumps(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"

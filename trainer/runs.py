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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import Interrupted, UserError
from trainer.rundir import LOCK_FILE, lock_holder

STATUS_FILE = "status.json"
NOT_COMPARED = ("name", "trainer.out_dir")  # differ between any two runs by construction


def is_epoch_record(record: dict[str, Any]) -> bool:
    """Epoch records of metrics.jsonl carry the epoch's speed; step records do not."""
    return "train/samples_per_s" in record


# ---------------------------------------------------------------- written by the loop


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json of a run, or {} for a run without one."""
    try:
        return json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


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
    gives the optimizer steps done; wall seconds add up over resumed sessions."""
    if not enabled:
        yield
        return
    started = time.time()
    before = read_status(run_dir).get("seconds", 0.0)
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

    name: str
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

    @property
    def label(self) -> str:
        """`finished`, `stopped at step N`, `running (step N)` or `failed at step N`."""
        if self.status == "finished":
            return "finished"
        if self.status == "running":
            return f"running (step {self.step})"
        return f"{self.status} at step {self.step}"


def find_runs(directory: Path) -> list[Path]:
    """Run directories (with a config.yaml) in `directory`, or `directory` itself."""
    if not directory.is_dir():
        raise UserError(f"DIR: {directory}: no such directory")
    if (directory / "config.yaml").is_file():
        return [directory]
    return sorted(p for p in directory.iterdir() if (p / "config.yaml").is_file())


def read_records(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records; a line cut short by a killed process is left out."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def summarize(run_dir: Path) -> RunSummary:
    """What a run's files say: status, progress, best and last metrics, wall time."""
    from trainer.config import default_mode
    from trainer.monitor import improved_best

    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    records = read_records(run_dir / "metrics.jsonl")
    epochs = [r for r in records if is_epoch_record(r)]
    saved = read_status(run_dir)
    step = saved.get("step", max((r.get("step", 0) for r in records), default=0))
    settings, checkpoint = config.get("trainer", {}), config.get("checkpoint", {})
    monitor = checkpoint.get("monitor", "val/loss")
    mode = checkpoint.get("mode") or default_mode(monitor)
    best = None
    for record in epochs:
        best = improved_best(best, record, monitor, mode)
    last = {
        k: v
        for k, v in (epochs[-1] if epochs else {}).items()
        if k not in ("epoch", "step", "train/samples_per_s") and not k.startswith("lr/")
    }
    status, reason = _status(run_dir, saved, records, epochs, settings)
    return RunSummary(
        name=run_dir.name,
        path=str(run_dir),
        status=status,
        reason=reason,
        epoch=epochs[-1]["epoch"] if epochs else 0,
        epochs=settings.get("epochs"),
        step=step,
        best=best,
        last=last,
        seconds=_seconds(run_dir, saved),
        config=_flatten(config),
    )


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
    max_steps = settings.get("max_steps")
    steps = max((r.get("step", 0) for r in records), default=0)
    if done >= settings.get("epochs", math.inf) or (max_steps and steps >= max_steps):
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


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists stay values."""
    if not isinstance(node, dict) or (prefix and not node):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat |= _flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
    return flat


def compare(run_dirs: list[Path]) -> tuple[list[RunSummary], list[str]]:
    """A summary per run, each keeping only the config keys whose values differ between runs
    (a key one run lacks differs too); returns the summaries and those keys."""
    summaries = [summarize(run_dir) for run_dir in run_dirs]
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
    """The rich table `trainer runs` prints: one row per run, a column per differing key."""
    from rich.table import Table

    from trainer.report import number

    table = Table(title="runs", title_justify="left")
    for column in ("run", "status", "epoch", "step", "best", "last", "time", *differing):
        table.add_column(column, justify="right" if column in ("epoch", "step") else "left")
    for run in summaries:
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

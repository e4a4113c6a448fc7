"""`trainer sweep`: hyperparameter search on Optuna.

Each trial is an ordinary run: `python -m trainer fit CONFIG [CONFIG...] <overrides> <sampled
values> trainer.out_dir=runs/<study>/trial-NNNN`, in a process of its own (so `--jobs J` runs
J at once, and a crash ends one trial, not the sweep). Its epoch records are read from its
metrics.jsonl as they are appended and reported to Optuna; a trial the pruner gives up on
gets SIGTERM (it saves last.pt and exits 130).

The study lives in its storage: by default a journal file in the study directory, which
processes (and machines sharing the filesystem) append to under a lock; or any Optuna RDB
URL. A trial whose sweep was stopped goes back to the queue and is resumed from its
last.pt by the next `trainer sweep` on the study.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from trainer.errors import UserError
from trainer.interrupt import PARENT_ENV
from trainer.runs.listing import read_status
from trainer.runs.metrics_file import MetricsTail, is_epoch_record
from trainer.state.files import moved_aside
from trainer.tools.search_space import (
    Space,
    build_component,
    check_against_config,
    import_optuna,
    load_space,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

JOURNAL = "study.journal"
POLL_S = 0.2  # how often a running trial's metrics.jsonl is read
INTERRUPTED = 130


@dataclass
class Sweep:
    """What the trials of one `trainer sweep` command share."""

    fit: list[str]  # `python -m trainer fit CONFIG [CONFIG...] <the command's KEY=VALUE>`
    study_dir: Path
    monitor: str
    mode: str  # min | max: checkpoint.mode
    storage: Any
    say: Callable[[str], None]
    jobs: int = 1
    stop: threading.Event = field(default_factory=threading.Event)
    children: set[subprocess.Popen] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Outcome:
    """How a trial ended: `state` is complete, pruned, failed or interrupted."""

    state: str
    value: float | None = None
    reason: str = ""


# ---------------------------------------------------------------- the command


def sweep(
    config_paths: list[str],
    overrides: list[str],
    *,
    space_path: str | None,
    trials: int,
    jobs: int,
    storage: str | None,
    study_name: str | None,
    summary_only: bool,
    plots: bool,
) -> int:
    """`trainer sweep`: check everything, run the trials, print the summary; the exit code."""
    from trainer.config import read_configs, validate_config
    from trainer.runs.report import make_console

    composed = read_configs(config_paths, overrides)
    raw_config = composed.raw  # merged: no `base`, best.yaml stands alone
    config = validate_config(copy.deepcopy(raw_config), composed.origins)
    name = study_name or f"{config.name}-sweep"
    if not STUDY_NAME.fullmatch(name):
        raise UserError(f"--study: {name!r}; use letters, digits and . _ - (it names a directory)")
    study_dir = Path("runs") / name
    checked = None if summary_only else _checked_space(space_path, raw_config)
    if summary_only and storage is None and not (study_dir / JOURNAL).is_file():
        raise UserError(f"--summary: no study {name!r} here ({study_dir / JOURNAL} is missing)")
    if storage is None:
        study_dir.mkdir(parents=True, exist_ok=True)
    monitor, mode = config.checkpoint.monitor, config.checkpoint.direction
    storage_object, shown = open_storage(storage, study_dir)
    console = make_console()
    fit = [sys.executable, "-m", "trainer", "fit", *config_paths, *overrides]
    sweep_run = Sweep(fit, study_dir, monitor, mode, storage_object, _printer(console), jobs=jobs)
    outcomes: list[Outcome] = []
    if checked is None:
        study = load_study(name, storage_object)
    else:
        space, built = checked
        study = open_study(name, storage_object, monitor=monitor, mode=mode, **built)
        outcomes = run_study(sweep_run, study, space, trials=trials, shown=shown)
    conclude(sweep_run, study, raw_config, console=console, plots=plots)
    if sweep_run.stop.is_set():
        sweep_run.say("interrupted: run the same command again to resume the stopped trials")
        return INTERRUPTED
    return 1 if outcomes and all(o.state == "failed" for o in outcomes) else 0


def _printer(console: Any) -> Callable[[str], None]:
    """`say`: a line to the console, whole even when trials of several threads speak."""
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            console.print(line, markup=False)

    return say


def run_study(sweep: Sweep, study: Any, space: Space, *, trials: int, shown: str) -> list[Outcome]:
    """Queue the space's `enqueue` points, put back the trials of sweeps that are gone, and
    run `trials` trials."""
    sweep.say(
        f"study {study.study_name}: {len(study.trials)} trials so far, "
        f"{study.direction.name.lower()} {sweep.monitor}; storage {shown}"
    )
    for params in space.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    for note in recover_stale_trials(study, sweep.storage, sweep.study_dir):
        sweep.say(note)
    return run_trials(sweep, study, space, trials=trials)


def conclude(
    sweep: Sweep, study: Any, raw_config: dict[str, Any], *, console: Any, plots: bool
) -> None:
    """The summary table and counts, best.yaml, and the plots if asked for."""
    table, lines = summary(study, monitor=sweep.monitor)
    console.print(table)
    for line in lines:
        sweep.say(line)
    best = write_best_config(study, raw_config, sweep.study_dir, monitor=sweep.monitor)
    if best is not None:
        sweep.say(f"best config: {best}; train it with: trainer fit {best}")
    for note in write_plots(study, sweep.study_dir, monitor=sweep.monitor) if plots else []:
        sweep.say(note)


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _checked_space(path: str | None, raw_config: dict[str, Any]) -> tuple[Space, dict[str, Any]]:
    """The space file, its sampler and pruner built, and each key tried in the config:
    every problem of the three at once."""
    if path is None:
        raise UserError(
            "--space: required to run trials: a SPACE.yaml of dotted config keys and "
            "their distributions (or --summary to print the study as it is)"
        )
    space = load_space(path)
    problems, built = [], {}
    for role in ("sampler", "pruner"):
        try:
            built[role] = build_component(space, role)
        except UserError as err:
            problems += err.problems
    try:
        check_against_config(space, raw_config)
    except UserError as err:
        problems += err.problems
    if problems:
        raise UserError(problems)
    return space, built


# ---------------------------------------------------------------- the study


def open_storage(url: str | None, study_dir: Path) -> tuple[Any, str]:
    """The Optuna storage and how to print it: a journal file (the default, in the study
    directory, or any path given) or an RDB URL (`postgresql://...`, `sqlite:///...`)."""
    optuna = import_optuna()
    if url is None or "://" not in url:
        path = Path(url) if url else study_dir / JOURNAL
        if path.is_dir():
            raise UserError(
                f"--storage: {path} is a directory; give a journal file (e.g. "
                f"{path / JOURNAL}, made if new) or an RDB URL (sqlite:///study.db, "
                "postgresql://...)"
            )
        if not path.parent.is_dir():
            raise UserError(f"--storage: {path.parent} is not a directory")
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend), str(path)
    import sqlalchemy

    shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    try:
        return optuna.storages.RDBStorage(url), shown
    except ImportError:
        raise UserError(
            f"--storage: {shown}: its database driver is not installed (e.g. psycopg2 for "
            "postgresql://, pymysql for mysql+pymysql://)"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as err:
        raise UserError(f"--storage: cannot open {shown}: {err}") from None


def open_study(
    name: str, storage: Any, *, monitor: str, mode: str, sampler: Any, pruner: Any
) -> Any:
    """The study `name` in `storage`, created if new; its monitor must be this config's."""
    optuna = import_optuna()
    direction = "maximize" if mode == "max" else "minimize"
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    known = study.user_attrs.get("monitor")
    if known is None:
        study.set_user_attr("monitor", monitor)
    elif known != monitor or study.direction.name.lower() != direction:
        raise UserError(
            f"checkpoint.monitor: study {name!r} {study.direction.name.lower()}s {known}; "
            f"this config would {direction} {monitor}; name another study with --study"
        )
    return study


def load_study(name: str, storage: Any) -> Any:
    """An existing study, for `--summary`."""
    optuna = import_optuna()
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(f"--study: no study {name!r} in this storage") from None


def recover_stale_trials(study: Any, storage: Any, study_dir: Path) -> list[str]:
    """Trials left running by a sweep on this machine that is gone (killed): their trial
    process is stopped if it still runs, and they go back to the queue to be resumed. One
    sweep of the study at a time recovers (a lock on the study directory), so two starting
    together do not both put back a trial that one of them has since claimed again."""
    optuna = import_optuna()
    notes = []
    host = socket.gethostname()
    with _recovering(study_dir):
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            attrs = trial.user_attrs
            if attrs.get("host") != host or _runs(attrs.get("sweep_pid"), "sweep"):
                continue  # another machine's, still being claimed, or its sweep is alive
            if _runs(attrs.get("pid"), attrs.get("run_dir", "")):
                os.kill(attrs["pid"], signal.SIGTERM)  # it saves last.pt and exits
                while _runs(attrs["pid"], attrs["run_dir"]):
                    time.sleep(POLL_S)
            _requeue(storage, trial)
            notes.append(
                f"trial {trial.number}: its sweep (pid {attrs.get('sweep_pid')}) is gone; back "
                "to the queue, to go on from its last.pt (or start again without one)"
            )
    return notes


@contextlib.contextmanager
def _recovering(study_dir: Path) -> Iterator[None]:
    """Hold a lock on the study directory while trials are recovered (released however this
    process ends)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock to take
        yield
        return
    study_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(study_dir, os.O_RDONLY | os.O_CLOEXEC)  # the lock is on the directory
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _runs(pid: Any, marker: str) -> bool:
    """Whether process `pid` runs here with `marker` among the words of its command line
    (a pid that another program reused does not count); without /proc (macOS), whether a
    process `pid` exists at all."""
    if not isinstance(pid, int):
        return False
    if not Path("/proc/self/cmdline").is_file():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it exists
            return True
        return True
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # gone
        return False
    return any(marker == word or marker in word.split("=") for word in words)


def _claim(trial: Any) -> None:
    """Mark a trial this sweep's, `host` last: a running trial is recovered only when its
    `host` is this machine's and its `sweep_pid` is gone, so until both are written it is
    never taken for a killed sweep's (whatever another sweep reads in between)."""
    trial.set_user_attr("sweep_pid", os.getpid())
    trial.set_user_attr("host", socket.gethostname())


def _requeue(storage: Any, trial: Any) -> None:
    """Put a running trial back in the queue (WAITING): the next `study.ask()` of any
    sweep on the study takes it, with the params it already has. Its `host` goes first:
    the sweep that takes it claims it anew, and until then it is nobody's."""
    storage.set_trial_user_attr(trial._trial_id, "host", None)
    waiting = import_optuna().trial.TrialState.WAITING
    storage.set_trial_state_values(trial._trial_id, waiting)


# ---------------------------------------------------------------- running trials


def run_trials(sweep: Sweep, study: Any, space: Space, *, trials: int) -> list[Outcome]:
    """Run `trials` trials, `sweep.jobs` at a time; SIGINT/SIGTERM stop them (each saves
    its last.pt and goes back to the queue)."""
    outcomes: list[Outcome] = []
    crashes: list[BaseException] = []
    tickets = iter(range(trials))

    def worker() -> None:
        while not sweep.stop.is_set():
            with sweep.lock:
                if next(tickets, None) is None:
                    return
            try:
                outcome = run_trial(sweep, study, space)
            except BaseException as crash:  # raised again below, once the others stopped
                crashes.append(crash)
                sweep.stop.set()
                return
            with sweep.lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(sweep.jobs, trials))]
    with _forward_signals(sweep):
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(POLL_S)  # short waits, so a signal is handled at once
    if crashes:
        raise crashes[0]
    return outcomes


@contextlib.contextmanager
def _forward_signals(sweep: Sweep) -> Iterator[None]:
    """SIGINT/SIGTERM: stop starting trials, and send each running one SIGTERM (once more
    on a second signal, which makes them exit at once)."""

    def handle(signum: int, _frame: Any) -> None:
        first = not sweep.stop.is_set()
        sweep.stop.set()
        sweep.say(
            f"{signal.Signals(signum).name}: stopping the running trials (they save last.pt)"
            if first
            else "again: the trials exit now"
        )
        with sweep.lock:
            for child in sweep.children:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_trial(sweep: Sweep, study: Any, space: Space) -> Outcome:
    """Ask Optuna for a trial (a queued one first), run it as `trainer fit`, tell the end."""
    optuna = import_optuna()
    trial = study.ask()
    _claim(trial)
    run_dir, overrides, resume = _prepare(sweep, trial, space)
    command = [
        *sweep.fit,
        *overrides,
        f"trainer.out_dir={run_dir}",
        *(["--resume", str(resume)] if resume else []),
    ]
    resumed = f" (resumed from {resume})" if resume else ""
    sweep.say(f"trial {trial.number}: {' '.join(overrides)}{resumed}")
    outcome = watch_trial(sweep, study, trial, command, run_dir)
    if outcome.state == "interrupted":
        _requeue(sweep.storage, trial)
    else:
        trial.set_user_attr("reason", outcome.reason)
        value = outcome.value if outcome.state == "complete" else None
        study.tell(trial, value, state=_STATES[outcome.state](optuna.trial.TrialState))
    sweep.say(f"trial {trial.number} {outcome.state}: {outcome.reason}")
    return outcome


_STATES = {  # how an Outcome is told to Optuna
    "complete": lambda states: states.COMPLETE,
    "pruned": lambda states: states.PRUNED,
    "failed": lambda states: states.FAIL,
}


def _prepare(sweep: Sweep, trial: Any, space: Space) -> tuple[Path, list[str], Path | None]:
    """The trial's run directory, its sampled overrides, and the checkpoint to resume from:
    a trial back from the queue goes on where it stopped, a new one gets fresh values."""
    attrs = trial.user_attrs
    if "run_dir" in attrs:
        run_dir, overrides = Path(attrs["run_dir"]), list(attrs["overrides"])
        last = run_dir / "checkpoints" / "last.pt"
        # A file, or a sharded directory (moved aside if a save was killed between renames:
        # --resume last.pt finds it there).
        resume = last if last.exists() or moved_aside(last).exists() else None
        if resume is None:  # stopped before its first checkpoint: start again
            shutil.rmtree(run_dir, ignore_errors=True)
    else:
        overrides = [d.override(d.suggest(trial)) for d in space.dimensions]
        run_dir, resume = _unused(sweep.study_dir / f"trial-{trial.number:04d}"), None
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", overrides)
    return run_dir, overrides, resume


def _unused(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`, ... if it is taken (by a study of the same name that
    was deleted from its storage): `trainer fit` then makes it, so the path is known here.
    Trial numbers are the study's own, so no other sweep of it picks the same."""
    candidate, number = base, 1
    while candidate.exists() or candidate.with_name(candidate.name + ".log").exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def watch_trial(sweep: Sweep, study: Any, trial: Any, command: list[str], run_dir: Path) -> Outcome:
    """Run the trial's process, report its epochs as they come, prune when Optuna says so;
    its output goes to `<run_dir>.log`."""
    log_path = run_dir.with_name(run_dir.name + ".log")
    with open(log_path, "ab") as log:
        process = _start(sweep, command, log)
        if process is None:
            return Outcome("interrupted", reason="the sweep was stopped before it started")
        trial.set_user_attr("pid", process.pid)
        try:
            values, pruned = _follow(sweep, study, trial, process, run_dir)
        finally:
            with sweep.lock:
                sweep.children.discard(process)
    if pruned:
        return Outcome("pruned", reason=pruned)
    return _ending(sweep, run_dir, log_path, process.returncode, values)


def _start(sweep: Sweep, command: list[str], log: IO[bytes]) -> subprocess.Popen | None:
    """The trial's process, its output to `log`; None if the sweep is stopped already."""
    # The trial stops (SIGTERM: it saves last.pt) if the sweep dies, even by SIGKILL.
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{PARENT_ENV: str(os.getpid())})
    if sweep.jobs > 1:  # J trials share the cores instead of each taking them all
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // sweep.jobs)))
    with sweep.lock:
        if sweep.stop.is_set():
            return None
        # A session of its own: a Ctrl-C at the terminal reaches the sweep alone, which
        # sends each trial one SIGTERM (a second signal would make a trial exit at once).
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        sweep.children.add(process)
    return process


def _follow(
    sweep: Sweep, study: Any, trial: Any, process: subprocess.Popen, run_dir: Path
) -> tuple[dict[int, float], str]:
    """Report each epoch record's monitored value (whatever its prefix) as the trial's
    metrics.jsonl gets it, until the process ends; SIGTERM it once the trial is pruned.
    Returns every epoch's value (NaN where it is missing or not finite) and why the trial
    was pruned ('' if it was not)."""
    reported = set(study.get_trials(deepcopy=False)[trial.number].intermediate_values)
    records = MetricsTail(run_dir / "metrics.jsonl", warn=sweep.say)
    values: dict[int, float] = {}
    pruned = ""
    while True:
        exited = process.poll() is not None  # before reading: no record is missed
        for record in filter(is_epoch_record, records.read_new()):
            epoch, value = record["epoch"], record.get(sweep.monitor)
            values[epoch] = value = float("nan") if value is None else float(value)
            if epoch in reported or pruned:
                continue
            reported.add(epoch)
            pruned = _report(sweep, trial, epoch, value)
            if pruned and not exited:
                process.send_signal(signal.SIGTERM)  # it saves last.pt, exits 130
        if exited:
            return values, pruned
        time.sleep(POLL_S)


def _report(sweep: Sweep, trial: Any, epoch: int, value: float) -> str:
    """Tell Optuna an epoch's value; why the trial is pruned now, or ''."""
    trial.report(value, epoch)
    sweep.say(f"trial {trial.number} epoch {epoch}: {sweep.monitor} {value:.4g}")
    if value != value:  # NaN
        return f"{sweep.monitor} is not finite at epoch {epoch} (diverged)"
    if trial.should_prune():
        return f"at epoch {epoch}, {sweep.monitor} {value:.4g}"
    return ""


def _ending(
    sweep: Sweep, run_dir: Path, log_path: Path, code: int, values: dict[int, float]
) -> Outcome:
    """How a trial that was not pruned ended, from its exit code, status and values."""
    errors = _error_lines(log_path)
    finite = {epoch: value for epoch, value in values.items() if value == value}
    # A run that finished is complete, even if a signal came as it was ending.
    finished = code == 0 or read_status(run_dir).get("status") == "finished"
    if finished and finite:
        # The trial's value is its best epoch's: the one its checkpoints/best.pt holds.
        best = (min if sweep.mode == "min" else max)(finite, key=finite.__getitem__)
        reason = f"{sweep.monitor} {finite[best]:.4g} (epoch {best})"
        return Outcome("complete", finite[best], reason)
    stopped = code == INTERRUPTED or code < 0  # by its signal handler, or by the signal
    if stopped and sweep.stop.is_set() and not finished:  # the sweep's stop: back to the queue
        last = run_dir / "checkpoints" / "last.pt"
        saved = f"saved {last}" if last.exists() else "no checkpoint yet: it starts again"
        return Outcome("interrupted", reason=f"exit {code}; {saved}")
    if code == 1 and errors:  # training failed (a NaN loss): the lr diverged, a bad region
        return Outcome("pruned", reason=f"training failed: {errors[-1]}")
    return Outcome("failed", reason=f"exit {code}: {'; '.join(errors) or f'see {log_path}'}")


def _error_lines(log_path: Path) -> list[str]:
    """The `error: ...` lines the trial's `trainer fit` printed (its own, clean failures)."""
    with open(log_path, "rb") as log:
        log.seek(max(0, log_path.stat().st_size - 8192))
        tail = log.read().decode("utf-8", "replace")
    lines = tail.splitlines()
    return [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]


# ---------------------------------------------------------------- the summary


FAILURES_SHOWN = 5


def summary(study: Any, *, monitor: str, top: int = 10) -> tuple[Any, list[str]]:
    """The best trials as a table (params and monitored value), and lines that count the
    trials by state and say why the last few failed trials failed."""
    from rich.table import Table

    from trainer.runs.report import number

    optuna = import_optuna()
    trials = study.get_trials(deepcopy=False)
    state = optuna.trial.TrialState
    complete = [t for t in trials if t.state == state.COMPLETE]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = sorted(complete, key=lambda t: t.value, reverse=maximize)[:top]
    keys = list(dict.fromkeys(k for t in best for k in t.params))
    direction = "max" if maximize else "min"
    table = Table(title=f"best trials by {monitor} ({direction})", title_justify="left")
    for column in ["trial", monitor, "epochs", *keys]:
        table.add_column(column, justify="left" if column in keys else "right")
    for trial in best:
        params = [number(trial.params[k]) if k in trial.params else "-" for k in keys]
        epochs = str(len(trial.intermediate_values))
        table.add_row(str(trial.number), number(trial.value), epochs, *params)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in state}
    lines = [
        f"study {study.study_name}: {len(trials)} trials: "
        + ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    ]
    failed = [t for t in trials if t.state == state.FAIL]
    for trial in failed[-FAILURES_SHOWN:]:
        lines.append(f"trial {trial.number} failed: {trial.user_attrs.get('reason', '?')}")
    return table, lines


def write_best_config(
    study: Any, raw_config: dict[str, Any], study_dir: Path, *, monitor: str
) -> Path | None:
    """`<study dir>/best.yaml`: the config with the best trial's values, resolved and ready
    for `trainer fit` (None while no trial is complete)."""
    from trainer.config import apply_overrides, config_to_yaml, validate_config

    try:
        best = study.best_trial
    except ValueError:
        return None
    overrides = best.user_attrs.get("overrides", [])
    config = validate_config(apply_overrides(copy.deepcopy(raw_config), overrides))
    header = (
        f"# best of sweep {study.study_name}: trial {best.number}, {monitor} "
        f"{best.value:.6g}\n# sampled: {' '.join(overrides)}\n"
        f"# its weights: {best.user_attrs.get('run_dir')}/checkpoints/best.pt\n"
    )
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / "best.yaml"
    path.write_text(header + config_to_yaml(config), encoding="utf-8")
    return path


def write_plots(study: Any, study_dir: Path, *, monitor: str) -> list[str]:
    """history.png (every complete trial's value, and the best so far) and importance.png
    (how much each key explains the values: Optuna's fANOVA) in the study directory."""
    import warnings

    from trainer.runs.report import pyplot

    plt = pyplot("--plots")
    from optuna.visualization import matplotlib as views

    optuna = import_optuna()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    notes = []
    for name, draw, needs in (
        ("history.png", views.plot_optimization_history, 1),
        ("importance.png", views.plot_param_importances, 2),
    ):
        if len(complete) < needs:
            notes.append(f"{name}: not drawn: it needs {needs} complete trial(s)")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the views are "experimental" in Optuna
            # Axes.figure may be a SubFigure; Optuna's views draw on a figure of their own.
            figure = cast("Figure", draw(study, target_name=monitor).figure)
        figure.set_size_inches(8, 4)
        figure.tight_layout()
        figure.savefig(study_dir / name)
        plt.close(figure)
        notes.append(f"wrote {study_dir / name}")
    return notes

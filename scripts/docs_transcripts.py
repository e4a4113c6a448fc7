"""Regenerate, or check, the command transcripts of the docs (README.md, docs/**/*.md).

    uv run python scripts/docs_transcripts.py             # rewrite every transcript's output
    uv run python scripts/docs_transcripts.py --check     # exit 1 naming each stale one
    uv run python scripts/docs_transcripts.py docs/guides/quickstart.md   # some pages only

A transcript is a marker line, then a ```console block whose first line is the command:

    <!-- transcript: trainer groups configs/quickstart.yaml -->
    ```console
    $ trainer groups configs/quickstart.yaml
    <its output>
    ```

The marker may end with flags in parentheses: `(exit 2)` for a command that is meant to fail
with that code, `(slow)` for one that the check compares only by exit code and the lines
that carry metrics or errors. A ```yaml (or any) block with `title="NAME"` on the same page is
a file the page's commands can use (`trainer config bad.yaml`).

The commands of a page run in order, as a reader following it would run them, in one
scratch directory that starts with a copy of configs/ and the page's titled files. Each runs
in this process (`trainer.cli.app`, as `python -m trainer` would). `trainer fit
configs/quickstart.yaml` runs once for all pages: a page that runs it, or a command that
reads runs (`trainer inspect runs/...`, `runs`, `plot`, `eval`, `export`, `--resume`), finds
its runs/quickstart copied in. A line `<!-- transcript-setup: trainer fit ... -->` runs a
command whose output the page does not show (a second run for `trainer runs` to list). Nothing
is written to the repository's runs/. The environment is fixed: COLUMNS=100, NO_COLOR=1.

`--check` compares after normalising only what varies between runs and machines (speeds,
durations, dates, the device line, pids, the width of table rules), and reports each stale
transcript by file and line with a diff. tests/test_docs.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docs_markdown import ROOT, Block, blocks, pages

SETUP_MARKER = re.compile(r"^<!-- transcript-setup: (?P<command>trainer .+?) -->$")
MARKER = re.compile(r"^<!-- transcript: (?P<command>.+?)(?: \((?P<flags>[^()]*)\))? -->$")
# OMP_NUM_THREADS: a subprocess (a sweep's trial) trains on one thread, as the runs here do.
ENV = {"COLUMNS": "100", "LINES": "50", "NO_COLOR": "1", "TERM": "dumb", "TZ": "UTC"}
ENV["OMP_NUM_THREADS"] = "1"
SETUP = ("fit", "configs/quickstart.yaml")  # the run that commands reading runs/ find
READS_RUNS = ("runs", "plot", "inspect", "eval", "export")
# What varies from run to run or machine to machine, and what it is compared as.
VOLATILE = [
    (re.compile(r"[\d,]+(\.\d+)? samples/s"), "N samples/s"),
    (re.compile(r"(samples_per_s\"?:?) [\d.e+-]+"), r"\1 N"),
    (re.compile(r"[\d.]+ ?it/s"), "N it/s"),
    (re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?"), "DATE"),
    (re.compile(r"\b\d+:\d{2}:\d{2}\b"), "TIME"),
    (re.compile(r"\b(\d+(\.\d+)?(h|ms|m|s))+\b"), "DURATION"),  # 2.7s, 2m18s, 1h2m
    (re.compile(r"(\"seconds\": )[\d.e+-]+"), r"\1N"),
    (re.compile(r"\bpid \d+"), "pid N"),
    (re.compile(r"^device: .*$", re.M), "device: ..."),
    (re.compile(r"^python \d+\.\d+\.\d+.*$", re.M), "python ..."),  # trainer --version
    (re.compile(r"^torch \d.*$", re.M), "torch ..."),
    (re.compile(r"[─━═]+"), "─"),
    (re.compile(r"[ \t]+"), " "),
]
SHOWN_COMMAND = re.compile(r"^\$ (uv run )?(trainer|python -m trainer) ")
SHELL = ("console", "", "text", "shell", "sh", "bash")  # blocks where a command may show output
MATTERS = re.compile(r"\b(train|val)/\w|^error:|^done:", re.M)  # the lines a (slow) check reads


@dataclass(frozen=True)
class Transcript:
    """A command shown with its output, and how the page says it ends."""

    block: Block
    command: str
    exit_code: int
    slow: bool

    @property
    def shown(self) -> str:
        """The output the page shows (the block without its `$ command` line)."""
        return self.block.text.split("\n", 1)[1] if "\n" in self.block.text else ""


def transcripts(path: Path, text: str | None = None) -> tuple[list[Transcript], list[str]]:
    """The transcripts of a page, and the problems of its markers (one not followed by a
    console block whose first line is `$ <the command>`, an unknown flag), and of commands
    shown with output in a block without a marker."""
    text = path.read_text(encoding="utf-8") if text is None else text
    lines = text.splitlines()
    fenced = blocks(path, text)
    by_line = {block.line: block for block in fenced}
    inside = {n for block in fenced for n in range(block.line, block.end + 1)}
    found, problems = [], []
    for number, line in enumerate(lines, start=1):
        if number in inside:  # a marker shown in an example, not one of this page
            continue
        marker = MARKER.match(line.strip())
        if not marker:
            setup = line.strip().startswith("<!-- transcript-setup:")
            if setup and not SETUP_MARKER.match(line.strip()):
                problems.append(f"{path}:{number}: malformed setup marker {line.strip()!r}")
            if line.strip().startswith("<!-- transcript:"):
                problems.append(f"{path}:{number}: malformed marker {line.strip()!r}")
            continue
        command, flags = marker["command"].strip(), (marker["flags"] or "").split(",")
        block = by_line.get(number + 1)
        if block is None or block.lang != "console":
            problems.append(f"{path}:{number}: a transcript marker needs a ```console block next")
            continue
        if block.text.split("\n", 1)[0] != f"$ {command}":
            problems.append(f"{block.where}: the block's first line is not `$ {command}`")
            continue
        if not command.startswith("trainer "):
            problems.append(f"{block.where}: a transcript runs a `trainer ...` command")
            continue
        exit_code, slow = 0, False
        for flag in (f.strip() for f in flags if f.strip()):
            if flag == "slow":
                slow = True
            elif re.fullmatch(r"exit \d+", flag):
                exit_code = int(flag.split()[1])
            else:
                problems.append(f"{block.where}: unknown transcript flag {flag!r}")
        found.append(Transcript(block, command, exit_code, slow))
    claimed = {t.block.line for t in found}
    for block in fenced:
        if block.line in claimed or block.lang not in SHELL:
            continue
        shown = block.text.splitlines()
        for index, line in enumerate(shown[:-1]):
            after = shown[index + 1]
            if SHOWN_COMMAND.match(line) and after.strip() and not after.startswith("$ "):
                problems.append(
                    f"{block.where}: `{line[2:]}` is shown with its output but without a "
                    "transcript marker (<!-- transcript: ... --> and a ```console block of its "
                    "own), so nothing checks that output"
                )
    return found, problems


def page_files(path: Path, text: str | None = None) -> dict[str, str]:
    """The files a page shows as titled blocks (```yaml title="bad.yaml"), by name."""
    return {b.title: b.text for b in blocks(path, text) if b.title}


class Runner:
    """Runs the commands of pages, each page in a scratch directory of its own; the
    quickstart fit once for all of them."""

    def __init__(self) -> None:
        import torch

        # One intra-op thread, as tests/conftest.py's `one_thread` sets for the test session: a
        # run's numbers depend on the thread count, so the script writes what the test checks.
        torch.set_num_threads(1)
        self._scratch = tempfile.TemporaryDirectory(prefix="docs-transcripts-")
        self.root = Path(self._scratch.name)
        self._count = 0
        self._setup: tuple[int, str] | None = None

    def close(self) -> None:
        self._scratch.cleanup()

    def workspace(self, files: dict[str, str]) -> Workspace:
        """A fresh directory for one page: a copy of configs/ and the page's files."""
        self._count += 1
        return Workspace(self, _scratch_copy(self.root / f"page-{self._count}", files))

    def setup(self) -> tuple[int, str]:
        """The quickstart fit in its own directory, once: its runs/quickstart is copied into a
        page's directory where a command needs it."""
        if self._setup is None:
            self._setup = invoke(list(SETUP), _scratch_copy(self.root / "setup", {}))
            if self._setup[0] != 0:
                raise RuntimeError(
                    f"the setup `trainer {shlex.join(SETUP)}` failed:\n{self._setup[1]}"
                )
        return self._setup

    @property
    def quickstart_run(self) -> Path:
        return self.root / "setup" / "runs" / "quickstart"


@dataclass
class Workspace:
    """One page's directory: its commands run there in order, as a reader would run them."""

    runner: Runner
    path: Path

    def run(self, command: str) -> tuple[int, str]:
        """(exit code, output: stdout and stderr as a terminal shows them) of a command. The
        quickstart fit, or a command that reads runs, finds runs/quickstart copied in (the
        fit's output is the one fit's) unless the page made its own already."""
        args = shlex.split(command)[1:]
        reads_runs = bool(args) and (
            args[0] in READS_RUNS or "--resume" in args or any(a.startswith("runs/") for a in args)
        )
        own = self.path / "runs" / "quickstart"
        if (tuple(args) == SETUP or reads_runs) and not own.exists():
            fitted = self.runner.setup()
            shutil.copytree(self.runner.quickstart_run, own)
            if tuple(args) == SETUP:
                return fitted
        return invoke(args, self.path)


def _scratch_copy(directory: Path, files: dict[str, str]) -> Path:
    shutil.copytree(ROOT / "configs", directory / "configs")
    for name, text in files.items():
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return directory


@contextlib.contextmanager
def _inside(workspace: Path) -> Iterator[None]:
    """cwd in `workspace`, the way the console script has it (the current directory last on
    sys.path); the modules imported from it forgotten after."""
    from trainer.user_path import current_directory_last

    before, path = os.getcwd(), list(sys.path)
    modules = set(sys.modules)
    os.chdir(workspace)
    try:
        current_directory_last()
        yield
    finally:
        os.chdir(before)
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(workspace)):
                del sys.modules[name]


def invoke(args: list[str], workspace: Path) -> tuple[int, str]:
    """Run `trainer ARGS` in this process inside `workspace`: (exit code, output), the
    workspace's path and this host's name taken out of the output."""
    from typer.testing import CliRunner

    from trainer.cli import app

    with _inside(workspace), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(app, args, env=ENV, prog_name="trainer")
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        error = result.exception
        output += "".join(traceback.format_exception(type(error), error, error.__traceback__))
    output = output.replace(f"{workspace}/", "").replace(str(workspace), ".")
    return result.exit_code, output.replace(socket.gethostname(), "HOST")


def normalised(output: str, *, slow: bool = False) -> str:
    """An output as the check compares it: what varies replaced, table rules collapsed, and
    for a slow transcript only the lines that carry metrics or errors."""
    for pattern, replacement in VOLATILE:
        output = pattern.sub(replacement, output)
    lines = [line.rstrip() for line in output.strip("\n").splitlines()]
    if slow:
        lines = [line for line in lines if MATTERS.search(line)]
    return "\n".join(lines)


@dataclass
class Outcome:
    transcript: Transcript
    exit_code: int
    output: str
    seconds: float = 0.0  # how long the command took (the shared quickstart fit: once)

    @property
    def problems(self) -> list[str]:
        """Why the page's transcript is stale: the exit code, or a diff of the output."""
        t = self.transcript
        found = []
        if self.exit_code != t.exit_code:
            expected = f" (exit {t.exit_code})" if t.exit_code else ""
            found.append(
                f"{t.block.where}: `{t.command}`{expected} exited {self.exit_code}; its output:\n"
                f"{self.output}"
            )
        old, new = normalised(t.shown, slow=t.slow), normalised(self.output, slow=t.slow)
        if old != new:  # shown as written, not as normalised
            diff = difflib.unified_diff(
                t.shown.rstrip("\n").splitlines(),
                self.output.rstrip("\n").splitlines(),
                "shown",
                "now",
                lineterm="",
                n=1,
            )
            found.append(f"{t.block.where}: `{t.command}` is stale:\n" + "\n".join(diff))
        return found


def run_page(path: Path, runner: Runner) -> tuple[list[Outcome], list[str]]:
    """Every transcript of a page run in order, its setup commands between them, in one
    directory; and the page's problems (markers, a setup command that failed)."""
    text = path.read_text(encoding="utf-8")
    found, problems = transcripts(path, text)
    workspace = runner.workspace(page_files(path, text))
    steps: list[tuple[int, Transcript | str]] = [(t.block.line, t) for t in found]
    steps += setups(path, text)
    outcomes = []
    for line, step in sorted(steps, key=lambda s: s[0]):
        if isinstance(step, str):
            exit_code, output = workspace.run(step)
            if exit_code != 0:
                problems.append(f"{path}:{line}: setup `{step}` exited {exit_code}:\n{output}")
            continue
        started = time.perf_counter()
        exit_code, output = workspace.run(step.command)
        outcomes.append(Outcome(step, exit_code, output, time.perf_counter() - started))
    return outcomes, problems


def setups(path: Path, text: str) -> list[tuple[int, str]]:
    """(line, command) of a page's `<!-- transcript-setup: CMD -->` lines: commands run
    before the next transcripts, their output not shown (a second run that `trainer runs`
    lists)."""
    fenced = blocks(path, text)
    inside = {n for block in fenced for n in range(block.line, block.end + 1)}
    return [
        (number, found["command"].strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if number not in inside and (found := SETUP_MARKER.match(line.strip()))
    ]


def rewrite(path: Path, outcomes: list[Outcome]) -> bool:
    """Write each transcript's new output into its page; a block whose output is the same
    after normalising is left as it is (speeds and durations do not churn)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = False
    for outcome in sorted(outcomes, key=lambda o: -o.transcript.block.line):
        block = outcome.transcript.block
        if normalised(outcome.transcript.shown) == normalised(outcome.output):
            continue
        indent = re.match(r"[ \t]*", lines[block.line - 1])
        pad = indent[0] if indent else ""
        body = [f"{pad}$ {outcome.transcript.command}\n"]
        output = outcome.output.rstrip("\n")
        body += [f"{pad}{line}".rstrip() + "\n" for line in output.split("\n")] if output else []
        lines[block.line : block.end - 1] = body
        changed = True
    if changed:
        path.write_text("".join(lines), encoding="utf-8")
    return changed


def check(paths: list[Path], runner: Runner) -> list[str]:
    """Every problem of the transcripts of `paths`: markers, exit codes, stale outputs."""
    problems = []
    for path in paths:
        outcomes, found = run_page(path, runner)
        problems += found + [p for outcome in outcomes for p in outcome.problems]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path, help="pages (default: every page)")
    parser.add_argument("--check", action="store_true", help="exit 1 where one is stale")
    parser.add_argument("--times", action="store_true", help="print each command's seconds")
    args = parser.parse_args(argv)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the same device line
    paths = [p.resolve() for p in args.pages] or pages()
    runner = Runner()
    failed = False
    try:
        for path in paths:
            outcomes, problems = run_page(path, runner)
            if args.check:
                problems += [p for outcome in outcomes for p in outcome.problems]
            else:
                problems += [
                    o.problems[0] for o in outcomes if o.exit_code != o.transcript.exit_code
                ]
                good = [o for o in outcomes if o.exit_code == o.transcript.exit_code]
                if rewrite(path, good):
                    print(f"rewrote {path}")
            for problem in problems:
                print(problem, file=sys.stderr)
            if args.times:
                for o in outcomes:
                    print(f"{o.seconds:7.1f}s  {o.transcript.block.where}  {o.transcript.command}")
            failed = failed or bool(problems)
        return 1 if failed else 0
    finally:
        runner.close()


if __name__ == "__main__":
    sys.exit(main())

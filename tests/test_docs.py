"""The docs are checked, not trusted: the generated reference is what the code generates, every
config block validates, every transcript still runs as shown, the reference's checkpoint keys
and metric names are those of a real run, and every example config is valid, cited from the
docs and cites only files that exist. The conventions: docs/development/docs.md."""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from trainer.cli import app

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import docs_markdown  # noqa: E402
import docs_reference  # noqa: E402
import docs_transcripts  # noqa: E402

REFERENCE = ROOT / "docs" / "reference"


@pytest.fixture(scope="session")
def transcript_runner() -> Iterator[docs_transcripts.Runner]:
    """One runner for the session: the quickstart fit that transcripts read runs once."""
    runner = docs_transcripts.Runner()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def quickstart_run(transcript_runner: docs_transcripts.Runner) -> Path:
    """The run directory of `trainer fit configs/quickstart.yaml` (the transcripts' setup)."""
    transcript_runner.setup()
    return transcript_runner.quickstart_run


def write_page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return page


def table_column(page: Path) -> list[str]:
    """The first column of a reference page's tables, code spans unwrapped."""
    return re.findall(r"^\| `([^`]+)` \|", page.read_text(encoding="utf-8"), re.M)


# ---------------------------------------------------------------- the generated reference


def test_reference_pages_are_what_the_code_generates() -> None:
    diffs = docs_reference.stale(docs_reference.render())
    assert not diffs, f"run `{docs_reference.REGENERATE}`:\n" + "\n".join(diffs)


def test_a_stale_reference_page_fails_the_check_with_a_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "docs" / "reference"
    shutil.copytree(REFERENCE, copy)
    monkeypatch.setattr(docs_reference, "REFERENCE", copy)
    monkeypatch.setattr(docs_reference, "ROOT", tmp_path)
    assert docs_reference.main(["--check"]) == 0
    page = copy / "config.md"
    page.write_text(page.read_text().replace("| `seed` | int | `0`", "| `seed` | int | `1`"))
    assert docs_reference.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "docs/reference/config.md (on disk)" in out
    assert "-| `seed` | int | `1`" in out and "+| `seed` | int | `0`" in out


def test_the_config_reference_names_every_key_of_the_json_schema() -> None:
    """Every dotted key of `Config`'s JSON schema (walked here on its own, through sections,
    lists and named entries) is a row of config.md."""
    from trainer.config import Config

    schema = Config.model_json_schema()

    def keys(node: dict[str, Any], prefix: str) -> set[str]:
        ref = node.get("$ref")
        if isinstance(ref, str):
            node = schema["$defs"][ref.rpartition("/")[2]]
        found = set()
        for part in node.get("anyOf", []):
            found |= keys(part, prefix)
        if isinstance(node.get("items"), dict):
            found |= keys(node["items"], prefix + "[]")
        if isinstance(node.get("additionalProperties"), dict) and "properties" not in node:
            found |= keys(node["additionalProperties"], prefix + ".<name>")
        for name, value in node.get("properties", {}).items():
            dotted = f"{prefix}.{name}" if prefix else name
            found |= {dotted} | keys(value, dotted)
        return found

    documented = set(table_column(REFERENCE / "config.md"))
    same_as = re.findall(
        r"^## `([^`]+)`\n\n(?:.*\n\n)*?The same keys as \[`([^`]+)`\]",
        (REFERENCE / "config.md").read_text(encoding="utf-8"),
        re.M,
    )
    for key, first in same_as:  # a section documented once: its other places by prefix
        documented |= {k.replace(first, key, 1) for k in documented if k.startswith(first + ".")}
    expected = keys(schema, "")
    assert expected - documented == set()
    assert {"trainer.early_stopping.patience", "optimizers.<name>.params"} <= expected


def test_checkpoint_reference_lists_the_keys_of_a_real_checkpoint(quickstart_run: Path) -> None:
    import torch

    documented = table_column(REFERENCE / "checkpoint.md")
    saved = torch.load(quickstart_run / "checkpoints" / "best.pt", weights_only=True)
    assert sorted(documented) == sorted(saved)
    assert list(saved["optimizers"]) == ["optimizer"]


def test_metric_names_of_a_real_run_are_documented(quickstart_run: Path) -> None:
    documented = table_column(REFERENCE / "metrics.md")
    patterns = [docs_reference.metric_pattern(name) for name in documented]
    records = [json.loads(line) for line in (quickstart_run / "metrics.jsonl").open()]
    logged = {key for record in records for key in record}
    assert {key for key in logged if not any(p.fullmatch(key) for p in patterns)} == set()
    always = {name for name, _, when, _ in docs_reference.METRICS if when.startswith("always")}
    always = {name.replace("<group>", "default") for name in always}
    assert always <= logged, sorted(always - logged)


def test_metric_names_without_placeholders_are_the_runners_own() -> None:
    """A documented name that a quickstart run does not log (`train/grad_norm`) is still
    one the runner writes: it is in trainer/'s source, so a rename shows here."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "trainer").rglob("*.py"))
    fixed = [name for name, *_ in docs_reference.METRICS if "<" not in name]
    assert [name for name in fixed if f'"{name}' not in source] == []


@pytest.mark.parametrize(
    ("code", "raised"), [(c, what) for c, what, _ in docs_reference.exit_codes()]
)
def test_exit_codes_are_those_the_cli_gives(
    code: int, raised: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each documented code, from the command line: the exceptions of trainer.errors raised
    in a command, Ctrl-C, a usage error and success."""
    import trainer.engine.loop
    from trainer import errors

    monkeypatch.chdir(ROOT)
    args = ["fit", "configs/quickstart.yaml"]
    name = raised.strip("`")
    if hasattr(errors, name):
        error: BaseException = getattr(errors, name)("runs/x/checkpoints/last.pt")
    elif raised.startswith("Ctrl-C"):
        error = KeyboardInterrupt()
    elif raised == "usage error":
        args = ["fit", "--no-such-option"]
    else:
        args = ["config", "configs/quickstart.yaml"]

    def fit(*_: object, **__: object) -> None:
        raise error

    monkeypatch.setattr(trainer.engine.loop, "fit", fit)
    assert CliRunner().invoke(app, args).exit_code == code


# ---------------------------------------------------------------- config blocks


def test_config_blocks_in_the_docs_are_valid_configs() -> None:
    problems = [
        problem
        for page in docs_markdown.pages()
        for block in docs_markdown.blocks(page)
        if docs_markdown.is_config_block(block)
        for problem in docs_markdown.config_problems(block)
    ]
    assert problems == []


def test_a_bad_config_block_is_named_by_file_and_line(tmp_path: Path) -> None:
    page = write_page(
        tmp_path,
        """
        A fragment, merged onto configs/quickstart.yaml:

        ```yaml
        trainer: {epoch: 3}
        ```

        ```yaml
        # not a config: a sweep space
        optimizer.lr: {log_uniform: [1.0e-3, 1.0]}
        ```

        ```yaml
        name: whole
        model: {name: small_cnn}
        data: {name: shapes, batch_size: 0}
        ```

        - in a list, the other optimizer form:

          ```yaml
          optimizers:
            only: {params: '.*', optimizer: {name: SGD, lr: 0.1}}
          ```

        ```yaml
        # fragment of configs/gan.yaml
        optimizers: {generator: {clip_grad_norm: 1.0}}
        ```

        ```yaml
        # fragment of configs/quickstart.yaml
        model: {init_from: 3}
        ```
        """,
    )
    found = docs_markdown.blocks(page)
    assert [b.line for b in found] == [3, 7, 12, 20, 25, 30]
    assert [docs_markdown.is_config_block(b) for b in found] == [True, False] + [True] * 4
    problems = [
        p
        for b in found
        if docs_markdown.is_config_block(b)
        for p in docs_markdown.config_problems(b)
    ]
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"{page}:3: trainer.epoch: unknown key; did you mean 'epochs'?")
    assert problems[1].startswith(f"{page}:12: data.batch_size: Input should be greater than 0")
    # a `model` fragment merges onto its base (read as a whole config, it would lack `data`)
    assert problems[2].startswith(f"{page}:30: model.init_from:"), problems[2]


# ---------------------------------------------------------------- transcripts


def test_transcripts_in_the_docs_still_run_as_shown(
    transcript_runner: docs_transcripts.Runner,
) -> None:
    problems = docs_transcripts.check(docs_markdown.pages(), transcript_runner)
    hint = "run `uv run python scripts/docs_transcripts.py` and review the diff\n"
    assert not problems, hint + "\n".join(problems)


def test_a_stale_transcript_is_reported_and_regenerated(
    tmp_path: Path, transcript_runner: docs_transcripts.Runner
) -> None:
    page = write_page(
        tmp_path,
        """
        ```yaml title="bad.yaml"
        # not a config: for the error below
        name: bad
        model: {name: small_cnn}
        data: {name: shapes}
        trainer: {epoch: 3}
        ```

        <!-- transcript: trainer config bad.yaml (exit 2) -->
        ```console
        $ trainer config bad.yaml
        error: trainer.epoch: unknown key
        ```

        <!-- transcript: trainer config configs/quickstart.yaml trainer.epochs=2 -->
        ```console
        $ trainer config configs/quickstart.yaml trainer.epochs=2
        name: quickstart
        ```

        <!-- transcript: trainer config configs/nothing.yaml -->
        ```console
        $ trainer config configs/nothing.yaml
        ```

        <!-- transcript: trainer config configs/quickstart.yaml (exit 2) -->
        ```console
        $ trainer config configs/other.yaml
        ```
        """,
    )
    problems = docs_transcripts.check([page], transcript_runner)
    assert len(problems) == 5, problems
    assert (
        problems[0]
        == f"{page}:27: the block's first line is not `$ trainer config configs/quickstart.yaml`"
    )
    assert problems[1].startswith(f"{page}:10: `trainer config bad.yaml` is stale:")
    assert "+error: trainer.epoch: unknown key; did you mean 'epochs'?" in problems[1]
    assert problems[2].startswith(f"{page}:16: `trainer config configs/quickstart.yaml trainer.")
    assert "+  epochs: 2" in problems[2]
    assert problems[3].startswith(f"{page}:22: `trainer config configs/nothing.yaml` exited 2")
    outcomes, _ = docs_transcripts.run_page(page, transcript_runner)
    assert docs_transcripts.rewrite(
        page, [o for o in outcomes if o.exit_code == o.transcript.exit_code]
    )
    assert len(docs_transcripts.check([page], transcript_runner)) == 3  # nothing.yaml; the marker
    assert "  epochs: 2\n" in page.read_text()


def test_a_pages_commands_run_in_order_in_one_directory(
    tmp_path: Path, transcript_runner: docs_transcripts.Runner
) -> None:
    """A setup line runs unseen; `trainer runs` then lists the quickstart fit (copied in,
    not run again) and the page's own run; the next page starts afresh."""
    second = "trainer fit configs/quickstart.yaml name=second trainer.epochs=1 data.size=64"
    page = write_page(
        tmp_path,
        f"""
        <!-- transcript-setup: {second} -->

        <!-- transcript: trainer runs -->
        ```console
        $ trainer runs
        ```

        <!-- transcript-setup: trainer nothing -->
        """,
    )
    outcomes, problems = docs_transcripts.run_page(page, transcript_runner)
    assert problems == [
        f"{page}:8: setup `trainer nothing` exited 2:\n" + problems[0].split("\n", 1)[1]
    ]
    [runs] = outcomes
    assert runs.exit_code == 0
    rows = [line.split()[1] for line in runs.output.splitlines() if line.startswith("│")]
    assert rows == ["quickstart", "second"]
    assert "4/4" in runs.output and "1/1" in runs.output
    outcomes, _ = docs_transcripts.run_page(page, transcript_runner)
    assert [
        line.split()[1] for line in outcomes[0].output.splitlines() if line.startswith("│")
    ] == rows


def test_a_command_shown_with_output_needs_a_transcript_marker(tmp_path: Path) -> None:
    page = write_page(
        tmp_path,
        """
        ```bash
        uv run trainer fit configs/quickstart.yaml   # a command alone: nothing to check
        $ trainer runs
        $ trainer groups configs/quickstart.yaml
        ```

        ```
        $ uv run trainer list schedulers
        StepLR ...
        ```

        <!-- transcript: trainer config configs/quickstart.yaml -->
        ```console
        $ trainer config configs/quickstart.yaml
        name: quickstart
        ```
        """,
    )
    found, problems = docs_transcripts.transcripts(page)
    assert [t.command for t in found] == ["trainer config configs/quickstart.yaml"]
    assert problems == [
        f"{page}:7: `uv run trainer list schedulers` is shown with its output but without a "
        "transcript marker (<!-- transcript: ... --> and a ```console block of its own), so "
        "nothing checks that output"
    ]


def test_what_varies_between_runs_is_normalised_and_nothing_else() -> None:
    shown = """
        ┏━━━━━━━━━━━━┳━━━━━━┓
        ┃ run        ┃ time ┃
        │ quickstart │ 2.7s │
        epoch 1/4  batch 20/63  step 20  train/loss 1.146  lr 0.05  1,054 samples/s
        epoch 1/4  step 63  train/loss 0.4946  val/loss 0.1229  train/samples_per_s 952.6
        device: cuda:0 (auto)
        python 3.11.7
        torch 2.5.1+cu124 (CUDA 12.4 available: yes, 2 devices; MPS available: no)"""
    now = """
        ┏━━━━━━━━━━━━┳━━━━━━━━┓
        ┃ run        ┃ time   ┃
        │ quickstart │ 2m18s  │
        epoch 1/4  batch 20/63  step 20  train/loss 1.146  lr 0.05  170 samples/s
        epoch 1/4  step 63  train/loss 0.4946  val/loss 0.1229  train/samples_per_s 163.2
        device: cpu (auto: no CUDA or MPS device found)
        python 3.12.1
        torch 2.15.0+cpu (CUDA: not built in; MPS available: no)"""
    shown, now = textwrap.dedent(shown), textwrap.dedent(now)
    normalised = docs_transcripts.normalised
    assert normalised(shown) == normalised(now)
    assert normalised(shown) != normalised(now.replace("val/loss 0.1229", "val/loss 0.1230"))
    slow = "epoch 1/4  step 63  train/loss 0.4946\nparam groups\n"
    assert normalised(slow, slow=True) == normalised(
        "epoch 1/4  step 63  train/loss 0.4946", slow=True
    )


# ---------------------------------------------------------------- example configs


def example_configs() -> list[Path]:
    """configs/*.yaml that are configs (a sweep space's keys are all dotted)."""
    from trainer.config import parse_yaml

    found = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        raw = parse_yaml(path.read_text(encoding="utf-8"), source=str(path))
        if not all("." in key or key == "enqueue" for key in raw):
            found.append(path)
    return found


@pytest.mark.parametrize("config", example_configs(), ids=lambda p: p.name)
def test_every_example_config_passes_trainer_config(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, ["config", f"configs/{config.name}"])
    assert result.exit_code == 0, result.output


def test_every_example_config_is_cited_from_the_docs() -> None:
    if not (ROOT / "docs" / "guides").is_dir():
        pytest.skip("no docs/guides/ yet: the guides cite the example configs")
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").rglob("*.md")))
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert [c.name for c in configs if f"configs/{c.name}" not in text] == []


CITED = re.compile(
    r"(?<![\w/.-])((?:configs|scripts|docs|tests|trainer)/[\w./-]*\w|[\w./-]+\.md)\b"
)


def test_comments_in_example_configs_cite_only_files_that_exist() -> None:
    missing = []
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        for number, line in enumerate(config.read_text(encoding="utf-8").splitlines(), 1):
            comment = line.partition("#")[2]
            if comment.lstrip().startswith("yaml-language-server:"):
                continue  # the editor's schema line: resolved by the editor, not a citation
            for cited in CITED.findall(comment):
                if not (ROOT / cited.rstrip(".")).exists():
                    missing.append(f"configs/{config.name}:{number}: {cited}")
    assert missing == []

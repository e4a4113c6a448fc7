"""Damaged run files, one of each kind a hand edit, a bad copy or another tool leaves, for the
tests of every command that reads run directories (`runs`, `plot`, `fit --resume auto`)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class Damage(NamedTuple):
    file: str  # the run file it damages
    content: bytes  # metrics.jsonl: a line put in as line 2; the others: the whole file
    message: str  # what the warning (or error) says after the file's path


DAMAGES = {
    "metrics-array-line": Damage(
        "metrics.jsonl", b"[1, 2]", "metrics.jsonl, line 2: a JSON array, not an object"
    ),
    "metrics-not-utf8": Damage(
        "metrics.jsonl",
        b'{"epoch": 1, "step": 1, "train/loss": "\xff"}',
        "metrics.jsonl, line 2: not UTF-8 text",
    ),
    # The best val/loss of the run, so that a reader of the best epoch meets it.
    "epoch-record-without-epoch": Damage(
        "metrics.jsonl",
        b'{"step": 4, "val/loss": 0.001, "train/samples_per_s": 10.0}',
        "metrics.jsonl, line 2: no 'epoch' in the record",
    ),
    "status-a-list": Damage(
        "status.json", b'["finished"]', "status.json: a JSON array, not an object"
    ),
    "status-string-seconds": Damage(
        "status.json",
        b'{"status": "finished", "step": 8, "seconds": "12.5"}',
        'status.json: seconds is "12.5", not a number',
    ),
    "config-not-yaml": Damage(
        "config.yaml", b"name: r\nseed: [0\n", "config.yaml, line 3: not YAML"
    ),
    "config-a-list": Damage(
        "config.yaml", b"- name: r\n", "config.yaml: a list, not a mapping of config keys"
    ),
}


def damage(run_dir: Path, kind: str) -> Damage:
    """Damage a file of `run_dir` as DAMAGES[kind] says; returns the damage."""
    found = DAMAGES[kind]
    path = run_dir / found.file
    if found.file == "metrics.jsonl":
        first, rest = path.read_bytes().split(b"\n", 1)
        path.write_bytes(first + b"\n" + found.content + b"\n" + rest)
    else:
        path.write_bytes(found.content)
    return found

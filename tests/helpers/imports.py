"""What a `trainer` command imports: run it in a fresh interpreter, where nothing else has
imported torch yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = """
import json, sys
from trainer.cli import app
try:
    app({args!r}, prog_name="trainer")
except SystemExit as stop:
    code = stop.code
print(json.dumps(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))))
sys.exit(code or 0)
"""


def torch_modules_imported(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    """The command's output (before the last line) and the torch modules it imported, with
    `env` added to the environment; a failed command fails the caller's test."""
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT.format(args=args))],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert process.returncode == 0, process.stderr
    output, _, modules = process.stdout.rstrip("\n").rpartition("\n")
    return output, json.loads(modules)

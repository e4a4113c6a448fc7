"""The run directory on disk: config.yaml, metrics.jsonl, checkpoints/. Never overwritten."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def fresh_run_dir(base: Path) -> Path:
    """`base` if it is new or empty, else the first free `base-2`, `base-3`, ..."""
    candidate, number = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                return candidate
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint belongs to (`<run>/checkpoints/x.pt`), if any."""
    run = checkpoint.parent.parent
    if checkpoint.parent.name == "checkpoints" and (run / "config.yaml").is_file():
        return run
    return None


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
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl file."""
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]

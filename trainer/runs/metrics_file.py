"""metrics.jsonl, a run's metrics: its one writer, its readers, and what an epoch record is.

One JSON object a line, each with an integer `epoch` and `step` and a number (or null, for a
value that was not finite) under every other key: a step record every `log_every` steps, and
an epoch record at each epoch's end, which the writer marks `"epoch_end": true`.

Files written before that marker: an epoch record there is one that carries
`train/samples_per_s` (step records did not), in the lines before the file's first marked
record (a run of an older version resumed by this one has both). The readers mark such
records as they read them, so `is_epoch_record` is the one rule every reader applies.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trainer.errors import TrainingError, UserError
from trainer.runs.rundir import json_excerpt, json_kind

EPOCH_END = "epoch_end"  # the key that marks an epoch record, always `true`
UNMARKED_EPOCH_KEY = "train/samples_per_s"  # what marks one in a file written before EPOCH_END
NOT_METRICS = ("epoch", "step", EPOCH_END)

Record = dict[str, Any]


def mark_epoch(record: Record) -> Record:
    """An epoch's record, marked as one (what the loop writes at an epoch's end)."""
    return {**record, EPOCH_END: True}


def is_epoch_record(record: Record) -> bool:
    """Whether a record is an epoch's (the writer marked it, or a reader of an older file)."""
    return record.get(EPOCH_END) is True


def metric_names(record: Record) -> list[str]:
    """The record's metrics: its keys but `epoch`, `step` and the epoch marker."""
    return [key for key in record if key not in NOT_METRICS]


class _OlderEpochs:
    """Marks the epoch records of lines written before the marker, fed a file's records in
    order: until a marked record is seen, one with UNMARKED_EPOCH_KEY is an epoch's."""

    def __init__(self) -> None:
        self.marked_seen = False

    def __call__(self, record: Record) -> Record:
        if is_epoch_record(record):
            self.marked_seen = True
        elif not self.marked_seen and UNMARKED_EPOCH_KEY in record:
            return mark_epoch(record)
        return record


# ---------------------------------------------------------------- the writer


class MetricsFile:
    """metrics.jsonl's writer: one JSON object per line, flushed as it is written."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path = path
        # Under torch.distributed only rank 0 writes; the others hold a closed-off writer.
        self._file = open(path, "a", encoding="utf-8") if enabled else None  # noqa: SIM115

    def write(self, record: Record) -> None:
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


# ---------------------------------------------------------------- the readers


TORN = "cut short (the last line of a killed process)"
UNREADABLE = ("not UTF-8 text", "not JSON")


def metrics_lines(path: Path) -> Iterator[tuple[int, bytes, Record | str]]:
    """Each line of a metrics.jsonl file as (line number, the line, its record), the record
    replaced by what is wrong with the line when it is not one: TORN for an unfinished last
    line a killed process left. Blank lines are left out."""
    lines = path.read_bytes().split(b"\n")
    older_epochs = _OlderEpochs()
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        record = _record(line)
        unfinished = index == len(lines) - 1  # no newline after it: its write was cut
        if isinstance(record, dict):
            yield index + 1, line, older_epochs(record)
        else:
            yield index + 1, line, TORN if unfinished and record in UNREADABLE else record


def read_records(path: Path, *, warn: Callable[[str], None]) -> list[Record]:
    """metrics.jsonl's records, tolerantly: a line cut short by a killed process is left
    out, and a damaged line too, with a warning naming the file and line."""
    try:
        lines = list(metrics_lines(path))
    except FileNotFoundError:
        return []
    except OSError as err:
        warn(f"{path}: cannot read it ({err.strerror}); no metrics read")
        return []
    records = []
    for number, _, record in lines:
        if isinstance(record, dict):
            records.append(record)
        elif record != TORN:
            warn(f"{path}, line {number}: {record}; the line is skipped")
    return records


def read_metrics(path: Path) -> list[Record]:
    """Every record of a metrics.jsonl file; a damaged or torn line is a UserError naming
    the file and line."""
    records = []
    for number, _, record in metrics_lines(path):
        if isinstance(record, str):
            raise UserError(f"{path}, line {number}: {record}")
        records.append(record)
    return records


class MetricsTail:
    """The records of a metrics.jsonl that another process appends to, read as they come:
    each `read_new` returns those of the lines completed since the last call (a line still
    being written waits); a damaged line is skipped with a warning naming file and line."""

    def __init__(self, path: Path, *, warn: Callable[[str], None]) -> None:
        self.path, self.warn = path, warn
        self.offset, self.lines_read = 0, 0
        self.older_epochs = _OlderEpochs()

    def read_new(self) -> list[Record]:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                text = file.read()
        except FileNotFoundError:
            return []
        complete = text[: text.rfind(b"\n") + 1]
        self.offset += len(complete)
        records = []
        for line in complete.split(b"\n")[:-1]:
            self.lines_read += 1
            if not line.strip():
                continue
            record = _record(line)
            if isinstance(record, str):
                self.warn(f"{self.path}, line {self.lines_read}: {record}; the line is skipped")
            else:
                records.append(self.older_epochs(record))
        return records


def _record(line: bytes) -> Record | str:
    """One metrics.jsonl record: a JSON object with an integer `epoch` and `step`, `true`
    under EPOCH_END if it is there, and a number (or null, for a value that was not finite)
    under every other key; else what is wrong."""
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
        if key == EPOCH_END:
            if value is not True:
                return f"{key} is {json_excerpt(value)}, not true"
        elif value is not None and (
            not isinstance(value, (int, float)) or isinstance(value, bool)
        ):
            return f"{key} is {json_excerpt(value)}, not a number"
    return record

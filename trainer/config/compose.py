"""Configs that compose: `base:` files under a config, several config files in a row, and `~key`
deletions; with the file and line each key came from.

A file is read, then its bases (`base: a.yaml` or a list, relative to the file), each in
order, merged into what is already there (the files before it on the command line, or its
sibling bases): mappings merge key by key at every depth, any other value (a list, a scalar,
null) replaces. Then its `~key:` entries delete keys from that, and last its own keys merge.
A `~key:` stands at the top of a file, its key dotted (`~optimizer.momentum:`), with no
value; one inside a section is an error that names the dotted form. `key: null` stays a
value. The run's `name` is the last command-line file's own (its stem where it sets none,
see loading.read_configs): a `name` in a base or an earlier file is not inherited, so a
variant never runs, or resumes, in its base's run directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config.overrides import Origins, delete_path, set_origins
from trainer.config.yaml_files import dump_yaml, parse_yaml_lines, yaml_file_text
from trainer.errors import UserError, echo

MAX_BASE_DEPTH = 16  # a config, its base, the base's base, ...: 16 files in a chain at most
BASE = "base"


@dataclass
class Composed:
    """The merged raw mapping of some config files, where each value came from, and every
    file read (the command line's and their bases, in reading order)."""

    raw: dict[str, Any] = field(default_factory=dict)
    origins: Origins = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def compose_files(paths: Sequence[str | Path]) -> Composed:
    """Merge config files left to right, each with its bases (see the module's docstring)."""
    composed = Composed()
    for index, path in enumerate(map(Path, paths)):
        if index and not path.exists():
            raise UserError(
                f"config {path}: no such file (after the first CONFIG, an argument without "
                "'=' is another config file; an override is KEY=VALUE, a deletion ~KEY)"
            )
        _merge_file(path, composed, chain=(), named_by=None, names_run=index == len(paths) - 1)
    return composed


def read_config_mapping(
    path: Path, *, label: str = "config"
) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The raw top-level mapping of one YAML config file and its key lines (UserError else)."""
    if not path.is_file():
        if path.is_dir():
            what = "is a directory"
        elif path.exists():  # a FIFO, a socket, a device: reading it could block or never end
            what = "not a regular file"
        else:
            what = "no such file"
        raise UserError(f"{label} {path}: {what}")
    raw, lines = parse_yaml_lines(yaml_file_text(path, label=label), source=str(path))
    if raw is None:
        raise UserError(f"{label} {path}: the file is empty; expected a mapping of sections")
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise UserError(f"{label} {path}: expected a mapping of sections at the top, got a {kind}")
    return raw, lines


def _merge_file(
    path: Path,
    composed: Composed,
    *,
    chain: tuple[Path, ...],
    named_by: str | None,
    names_run: bool = False,
) -> None:
    """Merge `path` (its bases first, then its deletions, then its keys) into `composed`;
    its `name` only where it `names_run` (the last file on the command line)."""
    label = f"{named_by}: base" if named_by else "config"
    raw, lines = read_config_mapping(path, label=label)
    raw = _unshared(raw)  # merging into an aliased mapping must not change its other uses
    if not names_run:  # a variant never runs under (and resumes) its base's name
        raw.pop("name", None)
    composed.files.append(path)
    chain = (*chain, path)
    where = _line_of(path, lines)
    for base in _base_names(raw.pop(BASE, None), where((BASE,))):
        target = Path(os.path.normpath(path.parent / base))  # shown as `dir/a.yaml`
        if not target.exists():
            raise UserError(f"{where((BASE,))}: base: {base}: no such file (looked for {target})")
        seen = [p.resolve() for p in chain]
        if target.resolve() in seen:
            loop = chain[seen.index(target.resolve()) :]
            raise UserError(
                f"{where((BASE,))}: base: a cycle of bases: "
                + " -> ".join(str(p) for p in (*loop, target))
            )
        if len(chain) >= MAX_BASE_DEPTH:
            raise UserError(
                f"{where((BASE,))}: base: bases nest more than {MAX_BASE_DEPTH} files deep "
                f"({chain[0]} -> ... -> {target})"
            )
        _merge_file(target, composed, chain=chain, named_by=str(path))
    problems = []
    for deleted, place in _pop_deletions(raw, where):
        before = "by its bases or the config files before it"
        problem = delete_path(composed.raw, list(deleted), composed.origins, before)
        if problem:
            problems.append(f"{place}: ~{'.'.join(deleted)}: {problem}")
    if problems:
        raise UserError(problems)
    _merge(composed.raw, raw, (), composed.origins, where)


def _unshared(node: Any) -> Any:
    """A copy of parsed YAML in which no mapping or list appears twice (an alias `*a` of an
    anchor `&a` becomes a copy); loading bounded its expanded size."""
    if isinstance(node, dict):
        return {key: _unshared(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshared(value) for value in node]
    return node


Where = Callable[[tuple[str, ...]], str]  # a key path -> `file:line` (or `file`)


def _line_of(path: Path, lines: dict[tuple[str, ...], int]) -> Where:
    def where(key: tuple[str, ...]) -> str:
        return f"{path}:{lines[key]}" if key in lines else str(path)

    return where


def _base_names(value: Any, where: str) -> list[str]:
    """`base` as a list of file names: a string, or a list of strings; else a UserError."""
    names = [value] if isinstance(value, str) else value
    if value is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise UserError(
            f"{where}: base: expected a file name or a list of file names (relative to this "
            f"file), got {echo(value)}"
        )
    return names


def _pop_deletions(raw: dict[str, Any], where: Where) -> list[tuple[tuple[str, ...], str]]:
    """Take a file's `~key:` entries out of it: (the dotted path each deletes, its place); one
    with a value, or one inside a section, is an error."""
    found, problems = [], []
    for key in [k for k in raw if isinstance(k, str) and k.startswith("~")]:
        value = raw.pop(key)
        parts = tuple(key[1:].split("."))
        if not all(parts):
            problems.append(f"{where((key,))}: {key}: expected ~KEY with a dotted key")
        elif value is not None:
            problems.append(
                f"{where((key,))}: {key}: a deletion takes no value, got {echo(value)}; to "
                f"replace a section, write `{key}:` and then the key with its new value"
            )
        else:
            found.append((parts, where((key,))))
    for path in _nested_deletions(raw, ()):
        dotted = ".".join((*path[:-1], path[-1][1:]))
        problems.append(
            f"{where(path)}: {'.'.join(path)}: a deletion stands at the top of a file, its "
            f"key dotted: ~{dotted}:"
        )
    if problems:
        raise UserError(problems)
    return found


def _nested_deletions(node: Any, at: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The paths of `~key` entries inside the sections of a file (misplaced deletions)."""
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        if at and isinstance(key, str) and key.startswith("~"):
            found.append((*at, key))
        found += _nested_deletions(value, (*at, str(key)))
    return found


def _merge(
    into: dict[str, Any], over: dict[str, Any], at: tuple[str, ...], origins: Origins, where: Where
) -> None:
    """Merge `over` into `into` in place: mappings key by key, anything else replaces."""
    for key, value in over.items():
        path = (*at, str(key))
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, path, origins, where)
        else:
            into[key] = value
            set_origins(origins, path, value, where)


# ---------------------------------------------------------------- trainer config --origin


def origin_of(origins: Origins, path: tuple[str, ...]) -> str:
    """Where the value at `path` of the resolved config came from: its own origin or the
    nearest above it (a value the schema expanded), and any set inside it (an override of a
    list's item); "default" where no file or override set it."""
    own = next(
        (origins[path[:n]] for n in range(len(path), 0, -1) if path[:n] in origins), "default"
    )
    inside = [origins[p] for p in origins if len(p) > len(path) and p[: len(path)] == path]
    return ", ".join(dict.fromkeys([own, *inside]))


PROBLEM_KEY = re.compile(r"([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*): ")


def name_origins(problems: list[str], origins: Origins) -> list[str]:
    """Problems that start with a config key (`optimizer.lr: ...`), each with ` (set in
    small.yaml:3)` where a file or an override set that key's value."""
    named = []
    for problem in problems:
        key = PROBLEM_KEY.match(problem)
        origin = origin_of(origins, tuple(key.group(1).split("."))) if key else "default"
        named.append(problem if origin.startswith("default") else f"{problem} (set in {origin})")
    return named


def origin_yaml(data: dict[str, Any], origins: Origins) -> str:
    """The resolved config as YAML, each value with a `# <origin>` comment (a file:line, an
    override, or default); a mapping's values each on a line, lists in flow style."""
    lines: list[tuple[str, str]] = []
    _origin_lines(data, (), 0, origins, lines)
    width = max((len(text) for text, _ in lines), default=0)
    return "".join(
        f"{text.ljust(width)}  # {origin}\n" if origin else f"{text}\n" for text, origin in lines
    )


def _origin_lines(
    node: dict[str, Any],
    at: tuple[str, ...],
    depth: int,
    origins: Origins,
    lines: list[tuple[str, str]],
) -> None:
    for key, value in node.items():
        path = (*at, str(key))
        text = "  " * depth + _flow(key) + ":"
        if isinstance(value, dict) and value:
            lines.append((text, ""))
            _origin_lines(value, path, depth + 1, origins, lines)
        else:
            lines.append((f"{text} {_flow(value)}", origin_of(origins, path)))


def _flow(value: Any) -> str:
    """One value as one line of YAML (flow style), quoted where the loader would misread it."""
    text = dump_yaml([value], flow=True).strip()
    return text[1:-1]

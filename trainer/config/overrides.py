"""Dotted `KEY=VALUE` overrides after the config files, set into the raw mapping before the
schema sees it (values parsed as YAML), and `~KEY` deletions (Hydra's form); with where each
key came from (`Origins`) kept up to date when asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainer.config.yaml_files import parse_yaml
from trainer.errors import UserError, did_you_mean

# Where each key of a raw config was set, by key path: "small.yaml:4", "override lr=0.1".
# Only values are listed (not a mapping, or an empty one); a key of none is a schema default.
Origins = dict[tuple[str, ...], str]


def apply_overrides(
    raw: dict[str, Any], overrides: list[str], origins: Origins | None = None
) -> dict[str, Any]:
    """Set dotted `KEY=VALUE` overrides (values parsed as YAML) into the raw config and delete
    `~KEY`s, in order; every problem is reported at once."""
    problems = []
    for item in overrides:
        if item.startswith("~"):
            problems.extend(_delete_override(raw, item, origins))
            continue
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            problems.append(
                f"override {item!r}: expected KEY=VALUE with a dotted key, or ~KEY to delete one"
            )
            continue
        try:
            value = parse_yaml(text, source=f"override {item!r}")
            _set_path(raw, parts, value)
        except UserError as err:
            problems.extend(err.problems)
            continue
        except (KeyError, IndexError, TypeError) as err:
            problems.append(f"override {item!r}: {err.args[0]}")
            continue
        if origins is not None:
            set_origins(origins, tuple(parts), value, _always(f"override {item}"))
    if problems:
        raise UserError(problems)
    return raw


def _delete_override(raw: dict[str, Any], item: str, origins: Origins | None) -> list[str]:
    key = item[1:]
    parts = key.split(".")
    if "=" in key or not all(parts):
        return [f"override {item!r}: expected ~KEY with a dotted key and no value (it deletes)"]
    problem = delete_path(raw, parts, origins, "by the config files")
    return [f"override {item!r}: {problem}"] if problem else []


def delete_path(
    raw: dict[str, Any], parts: list[str], origins: Origins | None, setters: str
) -> str | None:
    """Delete the key at a dotted path of mappings; where there is none, why (no key is set
    `setters`, did you mean)."""
    node: Any = raw
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        if not isinstance(node, dict):
            return f"nothing to delete: {'.'.join(parts[:depth])} is not a section"
        found = next((key for key in node if str(key) == part), None)
        if found is None:
            hint = did_you_mean(part, [str(key) for key in node])
            return f"nothing to delete: no key {here} is set {setters}{hint}"
        if depth == len(parts) - 1:
            del node[found]
        else:
            node = node[found]
    if origins is not None:
        forget_origins(origins, tuple(parts))
    return None


def set_origins(
    origins: Origins, path: tuple[str, ...], value: Any, where: Callable[[tuple[str, ...]], str]
) -> None:
    """`value` is now at `path`: what was there is forgotten, each of its values comes from
    `where(its path)`."""
    forget_origins(origins, path)
    if isinstance(value, dict) and value:
        for key, item in value.items():
            set_origins(origins, (*path, str(key)), item, where)
    else:
        origins[path] = where(path)


def _always(label: str) -> Callable[[tuple[str, ...]], str]:
    return lambda path: label


def forget_origins(origins: Origins, path: tuple[str, ...]) -> None:
    """Forget where the values at and under `path` came from (they are gone)."""
    for known in [p for p in origins if p[: len(path)] == path]:
        del origins[known]


def _set_path(node: Any, parts: list[str], value: Any) -> None:
    """Set `value` at the dotted path `parts`, making a section where one is missing or null."""
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise IndexError(f"{here}: no item {part} in a list of {len(node)}")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and node.get(part) is None:
                node[part] = {}
        else:
            raise TypeError(f"{'.'.join(parts[:depth])} is a value, not a section")
        if last:
            node[index] = value
        else:
            node = node[index]


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping by dotted keys, the form overrides use: `{"a": {"b": 1}}` ->
    `{"a.b": 1}`; lists and empty mappings stay values."""
    if not isinstance(node, dict) or (prefix and not node):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return flat

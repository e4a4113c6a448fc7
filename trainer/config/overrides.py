"""Dotted `KEY=VALUE` overrides after the config path, set into the raw mapping before the
schema sees it (values parsed as YAML)."""

from __future__ import annotations

from typing import Any

from trainer.config.yaml_files import parse_yaml
from trainer.errors import UserError


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted `KEY=VALUE` overrides (values parsed as YAML) into the raw config."""
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            problems.append(f"override {item!r}: expected KEY=VALUE with a dotted key")
            continue
        try:
            value = parse_yaml(text, source=f"override {item!r}")
            _set_path(raw, parts, value)
        except UserError as err:
            problems.extend(err.problems)
        except (KeyError, IndexError, TypeError) as err:
            problems.append(f"override {item!r}: {err.args[0]}")
    if problems:
        raise UserError(problems)
    return raw


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

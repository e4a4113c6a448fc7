"""YAML as a config is read: UTF-8 text only, safe loading only, with limits on nesting and
alias expansion and no duplicate keys; errors name the file (or override), line and column.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import UserError, echo

# Far beyond any config; what a file needs to exhaust the stack or the memory is far beyond too.
MAX_DEPTH = 100
MAX_VALUES = 100_000


class _Refused(yaml.YAMLError):
    """A document that parses but that a config may not be: each problem with its place."""

    def __init__(self, problems: list[tuple[yaml.Mark, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`), caps nesting and
    alias expansion, and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise _Refused([(mark, f"nested more than {MAX_DEPTH} levels deep")])
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        duplicates = _duplicate_keys(node)
        if duplicates:
            raise _Refused(duplicates)
        return super().construct_document(node)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it beyond MAX_VALUES values or MAX_DEPTH levels,
    or loop."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            open_nodes.discard(id(node))
            children = _children(node)
            size[id(node)] = 1 + sum(size[id(child)] for child in children)
            depth[id(node)] = 1 + max((depth[id(child)] for child in children), default=0)
            if size[id(node)] > MAX_VALUES:
                message = (
                    f"too many values: the value here holds more than {MAX_VALUES:,} (aliases "
                    "counted as often as they are used), far more than any config"
                )
                raise _Refused([(node.start_mark, message)])
            if depth[id(node)] > MAX_DEPTH:
                message = f"aliases nest the value here more than {MAX_DEPTH} levels deep"
                raise _Refused([(node.start_mark, message)])
        elif id(node) in open_nodes:
            raise _Refused([(node.start_mark, "an alias refers to a value that contains it")])
        elif id(node) not in size:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def _duplicate_keys(root: yaml.Node) -> list[tuple[yaml.Mark, str]]:
    """Every key given twice in one mapping, by its dotted path and both lines."""
    found, seen = [], set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}{index}.") for index, item in enumerate(node.value))
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[tuple[str, str], yaml.Mark] = {}
        for key, value in node.value:
            name = f"{path}{key.value}" if isinstance(key, yaml.ScalarNode) else path
            stack.append((value, f"{name}."))
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            if (key.tag, key.value) in first:
                line = first[key.tag, key.value].line + 1
                found.append(
                    (
                        key.start_mark,
                        f"duplicate key {echo(name)} (first at line {line}): keys are unique "
                        "in YAML, and the second would silently replace the first",
                    )
                )
            first.setdefault((key.tag, key.value), key.start_mark)
    return sorted(found, key=lambda problem: problem[0].index)


class _SafeDumper(yaml.SafeDumper):
    """yaml.SafeDumper that quotes the strings _SafeLoader reads as floats (`'1e5'`)."""


for _yaml_class in (_SafeLoader, _SafeDumper):
    _yaml_class.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
        list("-+0123456789."),
    )


def parse_yaml(text: str, *, source: str) -> Any:
    """Parse YAML with safe loading only; errors name the line and column."""
    return parse_yaml_lines(text, source=source)[0]


def parse_yaml_lines(text: str, *, source: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    """parse_yaml, and the line (from 1) of every key of its mappings by key path (lists are
    not entered: their items have no key)."""
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except _Refused as err:
        problems = [f"{source}{_mark(mark)}: {problem}" for mark, problem in err.problems]
        raise UserError(problems) from None
    except yaml.constructor.ConstructorError as err:
        where = _mark(err.problem_mark)
        if "unhashable" in str(err.problem):
            raise UserError(
                f"{source}{where}: a mapping key is a list or a mapping; keys are plain "
                "values (a name, a number)"
            ) from None
        raise UserError(
            f"{source}{where}: {err.problem}; configs are read with yaml.safe_load, "
            "so python tags are not allowed"
        ) from None
    except yaml.YAMLError as err:
        where = _mark(getattr(err, "problem_mark", None))
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"{source}{where}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    return data, _key_lines(node)


def _key_lines(root: yaml.Node | None) -> dict[tuple[str, ...], int]:
    """The line of each mapping key by its path; a merged (`<<`) key has its anchor's line.
    The construction flattened merge keys in place and bounded the size (_check_expansion)."""
    lines: dict[tuple[str, ...], int] = {}
    stack: list[tuple[yaml.Node | None, tuple[str, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if not isinstance(node, yaml.MappingNode):
            continue
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines.setdefault((*path, key.value), key.start_mark.line + 1)
                stack.append((value, (*path, key.value)))
    return lines


def _mark(mark: yaml.Mark | None) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""


_BYTE_ORDER_MARKS = (  # UTF-32's marks first: UTF-16's are their prefixes
    ("UTF-32", codecs.BOM_UTF32_LE),
    ("UTF-32", codecs.BOM_UTF32_BE),
    ("UTF-16", codecs.BOM_UTF16_LE),
    ("UTF-16", codecs.BOM_UTF16_BE),
)


def yaml_file_text(path: Path, *, label: str = "config") -> str:
    """A YAML file's text: UTF-8 (a byte-order mark allowed), anything else refused as
    `<label> <path>: ...`."""
    data = path.read_bytes()
    marked = next((name for name, mark in _BYTE_ORDER_MARKS if data.startswith(mark)), None)
    if marked:
        raise UserError(f"{label} {path}: {marked} text (a byte-order mark); save it as UTF-8")
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise UserError(
            f"{label} {path}: a NUL byte on line {line}: a binary file or UTF-16 text, "
            "not a YAML file in UTF-8"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(
            f"{label} {path}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None


def dump_yaml(data: Any, *, flow: bool = False) -> str:
    """Plain data as YAML in the given key order, quoted where parse_yaml would misread it;
    with `flow`, on one line (`{a: 1, b: [2, 3]}`)."""
    if flow:
        return yaml.dump(
            data, Dumper=_SafeDumper, sort_keys=False, default_flow_style=True, width=2**31
        )
    return yaml.dump(data, Dumper=_SafeDumper, sort_keys=False, width=100)

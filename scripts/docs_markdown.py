"""The Markdown of the docs as the checks read it: the pages (README.md and docs/**/*.md), their
fenced code blocks with file and line, and the YAML blocks that are configs.

Used by scripts/docs_transcripts.py and tests/test_docs.py; see docs/development/docs.md for
the conventions (a YAML block is a config unless it starts with `# not a config`).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOT_A_CONFIG = "# not a config"
BASE_CONFIG = "configs/quickstart.yaml"  # what a config fragment is merged onto, by default
_FRAGMENT_OF = re.compile(r"^# fragment of (configs/[\w.-]+\.ya?ml)\b")
# A fragment of one optimizer form replaces the other form of its base (they are exclusive).
_REPLACES = {"optimizers": ("optimizer", "scheduler", "param_groups")}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_TITLE = re.compile(r"""\btitle=(?:"([^"]+)"|'([^']+)'|(\S+))""")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its page, the line of its opening fence (1-based), the info
    string's language and title (`yaml title="bad.yaml"`), its text, and the line before it."""

    path: Path
    line: int
    end: int  # the line of the closing fence
    lang: str
    title: str | None
    text: str
    before: str  # the line above the opening fence ('' for the first line)

    @property
    def where(self) -> str:
        """`docs/guides/x.md:12`, relative to the repository where it is inside it."""
        try:
            shown = self.path.relative_to(ROOT)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}"


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/, in a fixed order."""
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    return found + sorted((root / "docs").rglob("*.md"))


def blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced code blocks of a page (a fence may be indented, as in a list item)."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    found, index = [], 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening or (opening["fence"][0] == "`" and "`" in opening["info"]):
            index += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = [_dedent(line, indent) for line in lines[index + 1 : end]]
        title = _TITLE.search(info)
        found.append(
            Block(
                path=path,
                line=index + 1,
                end=end + 1,
                lang=info.split()[0].lower() if info.split() else "",
                title=next(t for t in title.groups() if t) if title else None,
                text="\n".join(body) + ("\n" if body else ""),
                before=lines[index - 1] if index else "",
            )
        )
        index = end + 1
    return found


def _dedent(line: str, indent: str) -> str:
    return line[len(indent) :] if line.startswith(indent) else line.lstrip(" \t")


def is_config_block(block: Block) -> bool:
    """A ```yaml block that does not start with `# not a config`."""
    return block.lang in ("yaml", "yml") and not block.text.lstrip().startswith(NOT_A_CONFIG)


def config_problems(block: Block, root: Path = ROOT) -> list[str]:
    """What `trainer config` would refuse in a config block (schema only, no torch): a block
    with a top-level `model` or `base` (and no `# fragment of` line) is a whole config, read
    as a file in a copy of configs/ (so `base:` resolves as it would there); any other is a
    fragment, deep-merged onto configs/quickstart.yaml, or onto the config a first line
    `# fragment of configs/x.yaml` names (an `optimizers` fragment replaces the base's
    one-optimizer form). Each problem is prefixed with the block's file and line."""
    from trainer.config import load_config, parse_yaml, read_configs, validate_config
    from trainer.errors import UserError

    try:
        raw = parse_yaml(block.text, source=block.where)
        if not isinstance(raw, dict):
            return [f"{block.where}: a config block is a mapping (or mark it {NOT_A_CONFIG!r})"]
        with tempfile.TemporaryDirectory(prefix="docs-config-") as scratch:
            configs = Path(scratch) / "configs"
            shutil.copytree(root / "configs", configs)
            named = _FRAGMENT_OF.match(block.text)
            if ("model" in raw or "base" in raw) and not named:
                path = configs / (block.title or "docs_block.yaml")
                path.write_text(block.text, encoding="utf-8")
                load_config(path)
            else:
                base = read_configs(configs / Path(named[1] if named else BASE_CONFIG).name).raw
                for key in raw:
                    for replaced in _REPLACES.get(key, ()):
                        base.pop(replaced, None)
                validate_config(deep_merge(base, raw))
    except UserError as err:
        return [f"{block.where}: {problem}" for problem in err.problems]
    return []


def deep_merge(base: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    """`fragment` over `base`: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged

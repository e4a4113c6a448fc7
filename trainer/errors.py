"""User-facing errors: bad input is reported by config key, all problems at once, exit 2."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable

# No error line is longer than this: a value from the config is echoed, never the whole of it.
MAX_PROBLEM_LENGTH = 2_000
ERROR_PREFIX = "error: "  # how the CLI prints each problem, within MAX_PROBLEM_LENGTH

_ECHO = reprlib.Repr()
_ECHO.maxlevel, _ECHO.maxlist, _ECHO.maxtuple, _ECHO.maxdict = 3, 6, 6, 4
_ECHO.maxstring, _ECHO.maxother, _ECHO.maxlong = 60, 60, 40


def echo(value: object) -> str:
    """A short repr of a value for an error message: long strings and collections are cut."""
    return _ECHO.repr(value)


def clipped(text: str, limit: int) -> str:
    """`text`, cut in the middle to at most `limit` characters."""
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


class UserError(Exception):
    """Bad input (config, override, path, checkpoint): exit 2, no traceback."""

    def __init__(self, problems: str | Iterable[str]) -> None:
        listed = [problems] if isinstance(problems, str) else list(problems)
        limit = MAX_PROBLEM_LENGTH - len(ERROR_PREFIX)
        self.problems = [clipped(problem, limit) for problem in listed]
        super().__init__("\n".join(self.problems))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' did you mean 'x'?' for the closest choice, compared case-insensitively, or ''."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean '{by_lower[close[0]]}'?" if close else ""


def unknown_name(key: str, name: str, choices: list[str], *, shown: int = 12) -> str:
    """The one message for a name that is not in a list of choices."""
    listed = ", ".join(choices[:shown]) + (", ..." if len(choices) > shown else "")
    return f"{key}: unknown '{name}'{did_you_mean(name, choices)} (choices: {listed})"


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving `checkpoint`: exit 130."""

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = checkpoint
        super().__init__(f"interrupted; saved {checkpoint}")


class TrainingError(Exception):
    """Training failed in a way the user should hear about without a traceback: exit 1."""

"""The current directory on `sys.path` after the standard library and installed packages.

The user's own modules import from it (as under `python -m`), but a `json.py`, `shlex.py` or
`numpy.py` of theirs shadows nothing the runner imports. This module imports nothing but
`os` and `sys` (both loaded before any directory is searched): `python -m trainer` runs it
before anything else is imported.
"""

from __future__ import annotations

import os
import sys

NO_CURRENT_DIRECTORY = (
    "error: the current directory no longer exists (it was deleted or moved); "
    "cd to a directory that exists and run the command again"
)


def current_directory_last() -> None:
    """Move the current directory (`''` or its path) to the end of `sys.path`, or exit 2
    with one line when it no longer exists."""
    try:
        here = os.getcwd()
    except FileNotFoundError:
        print(NO_CURRENT_DIRECTORY, file=sys.stderr)
        raise SystemExit(2) from None
    sys.path[:] = [entry for entry in sys.path if entry not in ("", here)] + [here]

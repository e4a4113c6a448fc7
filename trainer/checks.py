"""The checking stage: every component a config names, its name and keyword arguments
checked against the callable's signature before anything is built (all problems at once).

The registry knows names and signatures; this module knows which config section is which
kind and what the runner fills in itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from trainer.registry import check_component
from trainer.schedulers import LENGTH_ARGUMENTS
from trainer.transforms import check_transforms

SECTION_KINDS = {
    "model": "models",
    "data": "datasets",
    "loss": "losses",
    "optimizer": "optimizers",
    "scheduler": "schedulers",
}


def check_components(config: Any, sections: Iterable[str] = tuple(SECTION_KINDS)) -> list[str]:
    """Names and keyword arguments of the config's components, checked without building.

    With several optimizers, `optimizer` and `scheduler` mean every optimizer's own.
    """
    problems = []
    if "data" in sections:
        for split in ("train_transforms", "val_transforms"):
            problems += check_transforms(getattr(config.data, split), key=f"data.{split}")
    for kind in sections:
        for key, section in _sections(config, kind):
            if section is None:
                continue
            filled_in = (
                [LENGTH_ARGUMENTS[section.name]]
                if kind == "scheduler" and (section.name in LENGTH_ARGUMENTS)
                else []
            )
            problems += check_component(
                SECTION_KINDS[kind], section.name, section.kwargs, key=key, filled_in=filled_in
            )
    return problems


def _sections(config: Any, kind: str) -> list[tuple[str, Any]]:
    """(config key, section) of a kind: each optimizer's under `optimizers.<name>`."""
    several = getattr(config, "optimizers", None)
    if kind in ("optimizer", "scheduler") and several:
        return [
            (f"optimizers.{name}.{kind}", getattr(entry, kind)) for name, entry in several.items()
        ]
    return [(kind, getattr(config, kind))]

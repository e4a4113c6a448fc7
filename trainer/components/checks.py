"""The checking stage: every component a config names, its name and keyword arguments
checked against the callable's signature, and the option values torch takes without a word
checked against BOUNDS, before anything is built (all problems at once).

The registry knows names and signatures; this module knows which config section is which
kind, what the runner fills in itself, and which values make no sense.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard

from trainer.components.registry import check_component
from trainer.components.schedulers import LENGTH_ARGUMENTS
from trainer.components.transforms import check_transforms
from trainer.config import ComponentSections, Config, DataConfig

SECTION_KINDS = {
    "model": "models",
    "data": "datasets",
    "loss": "losses",
    "optimizer": "optimizers",
    "scheduler": "schedulers",
}


def check_components(
    config: Config | ComponentSections, sections: Iterable[str] = tuple(SECTION_KINDS)
) -> list[str]:
    """Names, keyword arguments and option values (BOUNDS, param-group rules' too) of the
    components of a config, or of the sections of one the schema refused that pass it on their
    own (`ConfigError.components`), checked without building.

    With several optimizers, `optimizer` and `scheduler` mean every optimizer's own.
    """
    found = config.component_sections() if isinstance(config, Config) else config
    problems = []
    data = found.by_kind.get("data", {}).get("data")
    if "data" in sections and isinstance(data, DataConfig):
        for split in ("train_transforms", "val_transforms"):
            problems += check_transforms(getattr(data, split), key=f"data.{split}")
    for kind in sections:
        for key, section in found.by_kind.get(kind, {}).items():
            filled_in = (
                [LENGTH_ARGUMENTS[section.name]]
                if kind == "scheduler" and (section.name in LENGTH_ARGUMENTS)
                else []
            )
            problems += check_component(
                SECTION_KINDS[kind], section.name, section.kwargs, key=key, filled_in=filled_in
            )
            problems += check_values(SECTION_KINDS[kind], section.kwargs, key=key)
        if kind == "optimizer":
            for key, options in found.rule_options.items():
                problems += check_values("optimizers", options, key=key)
    return problems


# ---------------------------------------------------------------- option values


@dataclass(frozen=True)
class Bound:
    """The numbers an option allows; a list of them is checked number by number (a per-group
    `max_lr`), or as a whole of exactly `count` numbers where the option is a tuple (`betas`)."""

    allowed: str  # for the message, e.g. ">= 0"
    test: Callable[[float], bool]
    count: int | None = None

    def problems(self, value: object, *, key: str) -> list[str]:
        """One line per value out of bounds; values that are not numbers are left to torch."""
        if self.count is not None:
            numbers = isinstance(value, (list, tuple)) and all(map(_number, value))
            fits = (
                isinstance(value, (list, tuple))
                and len(value) == self.count
                and (not numbers or all(map(self.test, value)))
            )
            return [] if fits else [f"{key}: {value!r} is out of range (allowed: {self.allowed})"]
        if isinstance(value, (list, tuple)):
            return [p for i, v in enumerate(value) for p in self.problems(v, key=f"{key}.{i}")]
        if not _number(value) or self.test(value):
            return []
        return [f"{key}: {value!r} is out of range (allowed: {self.allowed})"]


def _number(value: object) -> TypeGuard[int | float]:
    """A finite int or float (a non-finite one is the schema's to refuse, once)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


LEARNING_RATE = Bound(">= 0; a negative lr climbs the loss", lambda v: v >= 0)
NON_NEGATIVE = Bound(">= 0", lambda v: v >= 0)
FACTOR = Bound("> 0; the lr is multiplied by it", lambda v: v > 0)
DIVISOR = Bound("> 0; the lr is divided by it", lambda v: v > 0)
LENGTH = Bound("a whole number >= 1", lambda v: isinstance(v, int) and v >= 1)

# Option values torch accepts without a check and then trains on (StepLR's gamma: -1 gives
# lrs 0.05, -0.05, 0.05, ...) or divides by (T_max: 0), by kind and option name; the values
# torch checks itself but only on some paths (betas of a param-group rule) are here too.
# A new bound is one line: the option's name and a Bound.
BOUNDS: dict[str, dict[str, Bound]] = {
    "optimizers": {
        "lr": LEARNING_RATE,
        "weight_decay": NON_NEGATIVE,
        "momentum": NON_NEGATIVE,
        "betas": Bound("two numbers in [0, 1)", lambda v: 0 <= v < 1, count=2),
    },
    "schedulers": {
        "max_lr": LEARNING_RATE,  # OneCycleLR, CyclicLR: a number or one per group
        "base_lr": LEARNING_RATE,  # CyclicLR
        "eta_min": LEARNING_RATE,  # CosineAnnealingLR, CosineAnnealingWarmRestarts
        "min_lr": LEARNING_RATE,  # ReduceLROnPlateau
        "gamma": FACTOR,  # StepLR, MultiStepLR, ExponentialLR, CyclicLR's exp_range
        "factor": FACTOR,  # ReduceLROnPlateau, ConstantLR
        "div_factor": DIVISOR,  # OneCycleLR
        "final_div_factor": DIVISOR,
        "power": NON_NEGATIVE,  # PolynomialLR
        "step_size": LENGTH,  # StepLR
        "step_size_up": LENGTH,  # CyclicLR
        "T_max": LENGTH,  # CosineAnnealingLR
        "T_0": LENGTH,  # CosineAnnealingWarmRestarts
        "total_steps": LENGTH,  # OneCycleLR
    },
    "losses": {
        "label_smoothing": Bound("from 0 to 1", lambda v: 0 <= v <= 1),
    },
}


def check_values(kind: str, options: dict[str, Any], *, key: str) -> list[str]:
    """The options of a component of `kind` that are out of BOUNDS, one line each."""
    bounds = BOUNDS.get(kind, {})
    return [
        problem
        for option, value in options.items()
        if option in bounds
        for problem in bounds[option].problems(value, key=f"{key}.{option}")
    ]

"""SPACE.yaml for `trainer sweep`: dotted config keys mapped to distributions, checked
against the config before any trial runs.

```yaml
optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}
data.batch_size: {choice: [32, 64, 128]}
param_groups.rules.1.lr_mult: {uniform: [1, 20], step: 0.5}
pruner: {name: MedianPruner, n_startup_trials: 5}   # optional: an optuna.pruners class, or none
sampler: {name: TPESampler, seed: 0}                # optional: an optuna.samplers class
enqueue:                                            # optional: trials to run first
  - {optimizer.lr: 0.05, data.batch_size: 64}
```

Nothing here imports optuna or torch at import time.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.errors import UserError, did_you_mean, unknown_name

if TYPE_CHECKING:
    import optuna

DISTRIBUTIONS = {
    "uniform": "a float in [low, high]",
    "log_uniform": "a float in [low, high], drawn on a log scale (low > 0)",
    "int": "an integer in [low, high]",
    "log_int": "an integer in [low, high], drawn on a log scale (low >= 1)",
    "choice": "one of a list of values",
}
STEPPED = ("uniform", "int")  # the distributions that take a `step`
COMPONENTS = {"sampler": "samplers", "pruner": "pruners"}  # reserved keys -> optuna module
# Samplers that end the study from inside Optuna's own optimize loop, which a sweep of
# separate processes does not run in.
STOPPING_SAMPLERS = ("GridSampler", "BruteForceSampler")
PLAIN = (str, int, float, bool, type(None))  # what Optuna stores as a choice as it is


def import_optuna() -> Any:
    """optuna (an optional extra), quiet; exit 2 naming the extra when it is missing."""
    try:
        import optuna
    except ImportError:
        raise UserError(
            "trainer sweep: needs optuna, an optional extra: `uv sync --extra optuna` "
            "or `pip install 'trainer[optuna]'`"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass(frozen=True)
class Dimension:
    """One searched config key and its distribution."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def labels(self) -> list[Any]:
        """The choices as Optuna stores them: plain values as they are, the rest as JSON."""
        return [c if isinstance(c, PLAIN) else json.dumps(c) for c in self.choices]

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw this key's value for an Optuna trial (the param is named by the key)."""
        if self.kind == "choice":
            label = trial.suggest_categorical(self.key, self.labels)
            return self.choices[self.labels.index(label)]
        log = self.kind.startswith("log_")
        if self.kind in ("int", "log_int"):
            step = int(self.step or 1)
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=step, log=log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=log)

    def label(self, value: Any, *, where: str) -> Any:
        """The param value Optuna stores for `value`, which must lie in the distribution."""
        if self.kind == "choice":
            if value not in self.choices:
                raise UserError(f"{where}: {value!r} is not one of {list(self.choices)}")
            return self.labels[self.choices.index(value)]
        integer = self.kind in ("int", "log_int")
        if (
            not isinstance(value, int if integer else (int, float))
            or isinstance(value, bool)
            or not self.low <= value <= self.high
        ):
            raise UserError(f"{where}: {value!r} is not in {self.kind} [{self.low}, {self.high}]")
        return value

    def samples(self) -> list[Any]:
        """The values that stand for the whole range when the config is checked."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def override(self, value: Any) -> str:
        """`KEY=VALUE` for the trial's command line (JSON is a YAML value the config reads)."""
        return f"{self.key}={json.dumps(value)}"


@dataclass(frozen=True)
class Space:
    """A parsed SPACE.yaml: the dimensions, and the sampler and pruner specs (None: default)."""

    source: str
    dimensions: tuple[Dimension, ...]
    sampler: dict[str, Any] | None
    pruner: dict[str, Any] | None
    enqueue: tuple[dict[str, Any], ...] = ()  # params of the trials to run first


def load_space(path: str | Path) -> Space:
    """Read and check a SPACE.yaml; every problem is reported at once, naming the key."""
    from trainer.config import parse_yaml, yaml_file_text

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--space {path}: {'is a directory' if path.is_dir() else 'no such file'}")
    raw = parse_yaml(yaml_file_text(path, label="--space"), source=str(path))
    if not isinstance(raw, dict) or not raw:
        raise UserError(
            f"{path}: expected a mapping of dotted config keys to distributions, e.g. "
            "optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}"
        )
    problems: list[str] = []
    dimensions = []
    for key, entry in raw.items():
        where = f"{path}: {key}"
        if key in COMPONENTS:
            problems += _check_component(where, entry)
            continue
        if key == "enqueue":
            continue
        try:
            dimensions.append(parse_dimension(str(key), entry, where=where))
        except UserError as err:
            problems += err.problems
    if not dimensions and not problems:
        problems.append(f"{path}: no config key to search; add e.g. optimizer.lr: ...")
    try:
        enqueue = _enqueued(raw.get("enqueue"), dimensions, where=f"{path}: enqueue")
    except UserError as err:
        problems += err.problems
    if problems:
        raise UserError(problems)
    return Space(
        source=str(path),
        dimensions=tuple(dimensions),
        sampler=_component(raw.get("sampler")),
        pruner=_component(raw.get("pruner")),
        enqueue=enqueue,
    )


def _enqueued(
    entries: Any, dimensions: list[Dimension], *, where: str
) -> tuple[dict[str, Any], ...]:
    """`enqueue:` a list of `{key: value}` for keys of the space: trials run before any is
    sampled (a key left out is sampled)."""
    if entries is None:
        return ()
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{where}: expected a list of mappings {{key: value}}, got {entries!r}")
    by_key = {d.key: d for d in dimensions}
    problems, trials = [], []
    for index, entry in enumerate(entries):
        params = {}
        for key, value in entry.items():
            here = f"{where}.{index}.{key}"
            if key not in by_key:
                hint = did_you_mean(str(key), by_key)
                problems.append(f"{here}: not a key of the space{hint} (keys: {', '.join(by_key)})")
                continue
            try:
                params[key] = by_key[key].label(value, where=here)
            except UserError as err:
                problems += err.problems
        trials.append(params)
    if problems:
        raise UserError(problems)
    return tuple(trials)


def parse_dimension(key: str, entry: Any, *, where: str) -> Dimension:
    """One `{<distribution>: [low, high], step: ...}` or `{choice: [...]}` entry."""
    if not isinstance(entry, dict):
        raise UserError(
            f"{where}: expected a mapping like {{log_uniform: [1.0e-4, 1.0e-1]}} or "
            f"{{choice: [32, 64]}}, got {entry!r}"
        )
    kinds = [k for k in entry if k in DISTRIBUTIONS]
    others = [k for k in entry if k not in DISTRIBUTIONS and k != "step"]
    problems = []
    for other in others:
        hint = did_you_mean(str(other), [*DISTRIBUTIONS, "step"])
        if kinds or hint.endswith("'step'?"):
            allowed = ", ".join([*DISTRIBUTIONS, "step"])
            problems.append(f"{where}: unknown key {other!r}{hint} (allowed: {allowed})")
        else:
            problems.append(
                f"{where}: unknown distribution {other!r}{hint} "
                f"(distributions: {', '.join(DISTRIBUTIONS)})"
            )
    if len(kinds) > 1:
        problems.append(f"{where}: one distribution per key, got {', '.join(kinds)}")
    if not kinds and not others:
        problems.append(f"{where}: no distribution (choices: {', '.join(DISTRIBUTIONS)})")
    if problems:
        raise UserError(problems)
    kind = kinds[0]
    step = entry.get("step")
    if kind == "choice":
        return _choice(key, entry[kind], step, where=f"{where}.choice")
    return _range(key, kind, entry[kind], step, where=f"{where}.{kind}")


def _choice(key: str, values: Any, step: Any, *, where: str) -> Dimension:
    if step is not None:
        raise UserError(f"{where}: step is for {' and '.join(STEPPED)} only")
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}: expected a non-empty list of values, got {values!r}")
    labels = [json.dumps(v, sort_keys=True) for v in values]
    if len(set(labels)) < len(labels):
        raise UserError(f"{where}: a value is listed twice in {values!r}")
    return Dimension(key, "choice", choices=tuple(values))


def _range(key: str, kind: str, bounds: Any, step: Any, *, where: str) -> Dimension:
    integer = kind in ("int", "log_int")
    number = int if integer else (int, float)
    wanted = "integers" if integer else "numbers"
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, number) and not isinstance(b, bool) for b in bounds)
    ):
        raise UserError(f"{where}: expected [low, high], two {wanted}, got {bounds!r}")
    low, high = bounds
    problems = []
    if low > high:
        problems.append(f"{where}: low {low} > high {high}")
    if kind.startswith("log_") and low <= 0:
        problems.append(f"{where}: a log scale needs low > 0, got {low}")
    if step is not None and kind not in STEPPED:
        problems.append(f"{where}: step is for {' and '.join(STEPPED)} only")
    elif step is not None and (not isinstance(step, number) or isinstance(step, bool) or step <= 0):
        problems.append(f"{where}: step must be a positive {wanted[:-1]}, got {step!r}")
    if problems:
        raise UserError(problems)
    return Dimension(key, kind, low=low, high=high, step=step)


def _check_component(where: str, entry: Any) -> list[str]:
    """`sampler:`/`pruner:` are `{name: <optuna class>, ...}`, or `none` (pruner only)."""
    if entry is None or entry == "none":
        return [] if where.endswith("pruner") else [f"{where}: expected {{name: ...}}"]
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return [f"{where}: expected {{name: <class>, <keyword>: ...}}, got {entry!r}"]
    return []


def _component(entry: Any) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"name": "NopPruner"} if entry == "none" else dict(entry)


def build_component(space: Space, role: str) -> Any:
    """The space's sampler or pruner as an Optuna object (None: Optuna's default sampler;
    the median pruner)."""
    optuna = import_optuna()

    spec = getattr(space, role) or ({"name": "MedianPruner"} if role == "pruner" else None)
    if spec is None:
        return None
    module = getattr(optuna, COMPONENTS[role])
    base = optuna.pruners.BasePruner if role == "pruner" else optuna.samplers.BaseSampler
    names = sorted(
        n
        for n in dir(module)
        if isinstance(getattr(module, n), type)
        and issubclass(getattr(module, n), base)
        and not n.startswith("Base")
    )
    name, kwargs = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    where = f"{space.source}: {role}"
    if name in STOPPING_SAMPLERS:
        raise UserError(
            f"{where}.name: {name} stops the study from inside Optuna's optimize loop, which "
            "trainer sweep (separate processes) does not use; list the values as choices "
            "with RandomSampler or TPESampler, or put them under enqueue"
        )
    if name not in names:
        raise UserError(unknown_name(f"{where}.name", name, names))
    cls = getattr(module, name)
    try:
        inspect.signature(cls).bind(**kwargs)
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: {name}({', '.join(kwargs)}): {err}") from None


def check_against_config(space: Space, raw_config: dict[str, Any]) -> None:
    """Every key, set to the ends of its range (or each choice), must make a valid config:
    schema and component keywords, as `trainer fit` checks them before building."""
    from trainer.components.checks import check_components
    from trainer.config import apply_overrides, validate_config

    problems: list[str] = []
    for dimension in space.dimensions:
        found: dict[str, list[Any]] = {}  # problem -> the sampled values that have it
        samples = dimension.samples()
        for value in samples:
            raw = copy.deepcopy(raw_config)
            try:
                config = validate_config(apply_overrides(raw, [dimension.override(value)]))
                errors = check_components(config)
            except UserError as err:
                errors = err.problems
            for error in errors:
                found.setdefault(error, []).append(value)
        for error, values in found.items():
            # A problem of the key itself is said once; one of some values names them.
            some = (
                "" if len(values) == len(samples) else f" = {' | '.join(map(json.dumps, values))}"
            )
            said = error.removeprefix(f"{dimension.key}: ") if not some else error
            problems.append(f"{space.source}: {dimension.key}{some}: {said}")
    if problems:
        raise UserError(problems)

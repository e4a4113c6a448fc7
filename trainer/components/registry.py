"""Names and import paths → callables, with their keyword arguments checked before building.

One registry serves `trainer list`, "did you mean" and the builders. Kinds: models, datasets,
losses, optimizers, schedulers. A name is a built-in, a torch/torchvision name, a timm model
`timm/<name>` (the `timm` extra), or an import path `package.module:callable` (which runs user
code, as Hydra does).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import traceback
from collections.abc import Callable, Iterable
from functools import cache
from types import ModuleType
from typing import Any

from trainer.config import trust
from trainer.errors import UserError, did_you_mean, echo, unknown_name

KINDS = (
    "models",
    "datasets",
    "losses",
    "optimizers",
    "schedulers",
    "transforms",
    "steps",
    "metrics",
)

# The runner's own models and steps, as import paths: resolving one imports its module alone
# (no torchvision for the built-in model on the built-in dataset), and the registry imports
# no module that imports it back. Built-in datasets are trainer.components.datasets.BUILT_IN.
BUILT_IN = {
    "models": {
        "small_cnn": "trainer.components.models:small_cnn",
        "gan_mlp": "trainer.components.models:gan_mlp",
        "tiny_gpt": "trainer.components.language:tiny_gpt",
    },
    "steps": {
        "supervised": "trainer.engine.steps:supervised",
        "gan": "trainer.engine.steps:gan",
        "distill": "trainer.engine.steps:distill",
        "ring_quality": "trainer.engine.steps:ring_quality",
    },
}


# Arguments the runner passes itself: a config that sets them is an error, not a surprise.
SUPPLIED_BY_RUNNER = {
    "models": (),
    "datasets": ("train", "transform"),
    "losses": (),
    "optimizers": ("params",),
    "schedulers": ("optimizer", "last_epoch"),
    "transforms": (),
    "steps": ("batch", "model", "optimizers", "ctx"),
    "metrics": (),
}
# Why the runner sets them, where that is not plain.
RUNNER_REASONS = {
    "last_epoch": "; a schedule continues where it stopped with `trainer fit --resume`",
    "params": "; param_groups decides the tensors (and options) of each group",
}


def _first_line(obj: object) -> str:
    """The docstring's first sentence (which may run over several lines), on one line."""
    doc = (inspect.getdoc(obj) or "").strip().split("\n\n")[0]
    doc = re.sub(r"`([^`<]+?)\s*<[^>]*>`_+", r"\1", doc)  # reST links: keep their titles
    doc = re.sub(r"`([^`]+)`_+", r"\1", doc)  # reST references to a link target
    return " ".join(doc.split()).split(". ")[0].rstrip(".")


def _subclasses_in(
    module: ModuleType, base: tuple[type, ...], skip: Iterable[str] = ()
) -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {}
    for attr in dir(module):
        obj = getattr(module, attr)
        if (
            isinstance(obj, type)
            and issubclass(obj, base)
            and not attr.startswith("_")
            and attr not in skip
        ):
            found[attr] = obj
    return found


@cache
def entries(kind: str) -> dict[str, Callable[..., Any]]:
    """Every name of a kind, mapped to its callable (torch is imported here, not before)."""
    if kind == "datasets":
        from trainer.components.datasets import BUILT_IN as DATASETS

        return dict(DATASETS)
    if kind == "steps":
        return {name: _built_in(kind, name) for name in BUILT_IN[kind]}
    if kind == "models":
        import torchvision.models

        found = {name: _built_in(kind, name) for name in BUILT_IN[kind]}
        for name in torchvision.models.list_models(module=torchvision.models):
            found[name] = torchvision.models.get_model_builder(name)
        return found
    if kind == "transforms":
        from torchvision.transforms import v2

        return _subclasses_in(v2, (v2.Transform,), skip=["Transform"])
    if kind == "losses":
        import torch.nn

        return _subclasses_in(torch.nn, (torch.nn.modules.loss._Loss,))
    if kind == "optimizers":
        import torch.optim

        return _subclasses_in(torch.optim, (torch.optim.Optimizer,), skip=["Optimizer"])
    if kind == "schedulers":
        from torch.optim import lr_scheduler

        bases = (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)
        # SequentialLR and ChainedScheduler take scheduler objects, which YAML cannot name;
        # `scheduler.warmup` builds the common SequentialLR.
        skip = ["LRScheduler", "SequentialLR", "ChainedScheduler"]
        return _subclasses_in(lr_scheduler, bases, skip=skip)
    if kind == "metrics":
        return _metrics()
    raise ValueError(f"unknown kind {kind!r}")


def _metrics() -> dict[str, Callable[..., Any]]:
    """torchmetrics' classification and regression metrics that compute one number (those
    with a direction, `higher_is_better`; curves and confusion matrices have none)."""
    try:
        from torchmetrics import Metric, classification, regression
    except ImportError:
        raise UserError(needs_extra("metrics", package="torchmetrics", extra="metrics")) from None
    found = {}
    for module in (classification, regression):
        for name, cls in _subclasses_in(module, (Metric,)).items():
            if getattr(cls, "higher_is_better", None) is not None:
                found[name] = cls
    return dict(sorted(found.items()))


def needs_extra(key: str, *, package: str, extra: str) -> str:
    """The problem of a key whose feature needs an optional package that is not installed."""
    return (
        f"{key}: needs {package}, an optional extra: `uv sync --extra {extra}` "
        f"or `pip install 'trainer[{extra}]'`"
    )


def _built_in(kind: str, name: str) -> Callable[..., Any]:
    module_name, _, attr = BUILT_IN[kind][name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def describe(kind: str, *, compact: bool = False) -> list[tuple[str, str]]:
    """(name, one-line description) for every name of a kind, for `trainer list`; models end
    with timm's, each as `timm/<name>` (`compact`: one row for all of them)."""
    described = [(name, _first_line(fn)) for name, fn in entries(kind).items()]
    if kind == "models":
        described += _describe_timm(compact=compact)
    return described


def resolve(kind: str, name: str, *, key: str) -> Callable[..., Any]:
    """The callable for a name or an import path; a UserError naming `key` if there is none."""
    if ":" in name:
        return import_path(name, key=key, kind=kind)
    if name in BUILT_IN.get(kind, {}):
        return _built_in(kind, name)
    if kind == "models" and name.startswith(TIMM_PREFIX):
        return timm_model(name.removeprefix(TIMM_PREFIX), key=key)
    table = entries(kind)  # models: torchvision's are imported here, only when asked for
    if name not in table:
        choices = sorted(table, key=str.lower)
        if kind == "models" and name in _timm_names(required=False):
            choices = [TIMM_PREFIX + name]  # a timm name without its prefix
        raise UserError(unknown_name(key, name, choices))
    return table[name]


# timm's models are named `timm/<name>`: built by `timm.create_model(name, **kwargs)`, offline
# unless `pretrained: true`. timm is imported only when a config or `trainer list` names one.
TIMM_PREFIX = "timm/"


def _timm(*, key: str) -> ModuleType:
    """The timm package, or a UserError naming `key` and the extra that installs it."""
    try:
        import timm
    except ImportError:
        raise UserError(needs_extra(key, package="timm", extra="timm")) from None
    return timm


def _timm_names(*, required: bool = True, key: str = "model.name") -> list[str]:
    """timm's model names (without the prefix); none when timm is missing and not `required`."""
    try:
        return list(_timm(key=key).list_models())
    except UserError:
        if required:
            raise
        return []


def timm_model(name: str, *, key: str) -> Callable[..., Any]:
    """A builder of the timm model `name`: `timm.create_model(name, pretrained, **kwargs)`."""
    timm = _timm(key=key)
    if not timm.is_model(name):
        names = [TIMM_PREFIX + n for n in _timm_names(key=key)]
        raise UserError(unknown_name(key, TIMM_PREFIX + name, names))
    entrypoint = timm.models.model_entrypoint(name)

    def build(pretrained: bool = False, **kwargs: Any) -> Any:
        return timm.create_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = build.__qualname__ = TIMM_PREFIX + name
    build.__doc__ = entrypoint.__doc__
    build.__module__ = entrypoint.__module__  # the model's class lives there (see _rejected)
    return build


def _describe_timm(*, compact: bool) -> list[tuple[str, str]]:
    """timm's models for `trainer list models`, or how to install them."""
    try:
        timm = _timm(key=TIMM_PREFIX + "<name>")
    except UserError as err:
        return [(TIMM_PREFIX + "<name>", err.problems[0])]
    names = timm.list_models()
    if compact:
        return [
            (
                TIMM_PREFIX + "<name>",
                f"{len(names)} timm models (timm.create_model; `trainer list models` lists them)",
            )
        ]
    get = timm.models.model_entrypoint
    return [(TIMM_PREFIX + name, _first_line(get(name)) or "timm model") for name in names]


IMPORT_PATH = re.compile(r"(?P<module>\w+(\.\w+)*):(?P<attr>\w+(\.\w+)*)", re.ASCII)


def import_path(path: str, *, key: str, kind: str | None = None) -> Callable[..., Any]:
    """The callable `package.module:name` names, if the trust policy allows it
    (trainer.config.trust).

    The path is checked before its module is imported, and what it resolves to after, before
    anything calls it; from torch and torchvision only what a key of `kind` is for.
    """
    parts = IMPORT_PATH.fullmatch(path)
    if parts is None or parts["module"][0].isdigit():
        raise UserError(
            f"{key}: {echo(path)} is not an import path: expected 'package.module:callable' "
            "(a module, a colon, a name)"
        )
    module_name, attr = parts["module"], parts["attr"]
    trust.check_path(module_name, attr, key=key)
    obj: Any = _import_module(module_name, path, key=key)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{key}: '{module_name}' has no attribute '{attr}' ({path!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{key}: {path!r} is not callable")
    trust.check_resolved(obj, path, key=key, kind=kind)
    return obj


def _import_module(module_name: str, path: str, *, key: str) -> Any:
    """Import a module; its own errors (a SyntaxError, a raise) name where they happened."""
    try:
        return importlib.import_module(module_name)
    except Exception as err:
        missing = err.name if isinstance(err, ModuleNotFoundError) else None
        if missing is not None and f"{module_name}.".startswith(f"{missing}."):
            raise UserError(f"{key}: cannot import '{module_name}' from {path!r}: {err}") from None
        if isinstance(err, SyntaxError) and err.filename:
            where = f"{err.filename}:{err.lineno}"
        else:
            frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename[0] != "<"]
            own = [f for f in frames if trust.is_users_file(f.filename)]
            where = "{0.filename}:{0.lineno}".format((own or frames)[-1])
        raise UserError(
            f"{key}: importing '{module_name}' for {path!r} failed at {where}: "
            f"{type(err).__name__}: {err}"
        ) from None


def check_arguments(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    key: str,
    kind: str,
    filled_in: Iterable[str] = (),
) -> list[str]:
    """Problems with `kwargs` for `fn`: unknown keywords and missing required ones.

    `filled_in` names arguments the runner supplies when the config leaves them out.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    supplied = SUPPLIED_BY_RUNNER[kind]
    label = getattr(fn, "__name__", repr(fn))
    named = [
        n
        for n, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in supplied
    ]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    problems = []
    for arg in kwargs:
        if arg in supplied:
            reason = RUNNER_REASONS.get(arg, "")
            problems.append(f"{key}.{arg}: set by the runner, not by the config{reason}")
        elif arg not in named and not takes_any:
            problems.append(
                f"{key}.{arg}: not an argument of {label}{did_you_mean(arg, named)}"
                f" (arguments: {', '.join(named) or 'none'})"
            )
    for name, param in params.items():
        required = param.default is param.empty and param.kind not in (
            param.VAR_POSITIONAL,
            param.VAR_KEYWORD,
        )
        if required and name not in kwargs and name not in supplied and name not in filled_in:
            problems.append(f"{key}.{name}: required argument of {label} is missing")
    return problems


def accepts(fn: Callable[..., Any], argument: str) -> bool:
    """Whether `fn` takes a keyword `argument` (by name or through **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return argument in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _keywords_of(cls: Any) -> list[str]:
    """Keyword arguments of a class a builder returns (torchvision builders pass **kwargs on)."""
    if not isinstance(cls, type):
        return []
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def build(kind: str, name: str, kwargs: dict[str, Any], *, key: str, **supplied: Any) -> Any:
    """Resolve, check, bind and call `fn(**supplied, **kwargs)`; bad arguments are UserErrors.

    An exception raised in the user's own code once the arguments are bound is a bug there,
    not bad input: it propagates with its traceback (exit 1).
    """
    fn = resolve(kind, name, key=f"{key}.name")
    problems = check_arguments(fn, kwargs, key=key, kind=kind)
    if problems:
        raise UserError(problems)
    try:
        inspect.signature(fn).bind(**supplied, **kwargs)
    except TypeError as err:
        raise UserError(f"{key}: {name} cannot take these arguments: {err}") from None
    except ValueError:  # no signature to bind against (some builtins): the call decides
        pass
    try:
        return fn(**supplied, **kwargs)
    except (ValueError, TypeError, RuntimeError, AttributeError, KeyError, AssertionError) as err:
        if trust.raised_in_users_code(err):
            if hasattr(err, "add_note"):  # Python 3.11+
                err.add_note(
                    f"(raised in {name}, built for `{key}` after its arguments were accepted: "
                    "a bug in that code, not a problem of the config)"
                )
            raise
        # torch, torchvision, timm (with an assert) or a built-in refused the config's values
        # (a string for a number, a negative size): the user's input, named by its config key.
        raise UserError(_rejected(fn, name, err, key=key)) from None


def _rejected(fn: Callable[..., Any], name: str, err: Exception, *, key: str) -> str:
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(err))
    if not isinstance(err, TypeError) or unexpected is None:
        return f"{key}: {name} rejected its arguments: {type(err).__name__}: {err}"
    arg = unexpected.group(1)  # a builder that passes **kwargs on (torchvision's) refused it
    known = _keywords_of(inspect.signature(fn).return_annotation) or _keywords_of(
        _refusing_class(fn, err)
    )
    listed = f" (arguments: {', '.join(known)})" if known else ""
    return f"{key}.{arg}: not an argument of {name}{did_you_mean(arg, known)}{listed}"


def _refusing_class(fn: Callable[..., Any], err: Exception) -> Any:
    """The class whose `__init__` refused a keyword, looked up in the builder's module (timm's
    builders name no return type)."""
    refused = re.match(r"(\w+)\.__init__\(\)", str(err))
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    return getattr(module, refused.group(1), None) if refused and module else None


def check_component(
    kind: str, name: str, kwargs: dict[str, Any], *, key: str, filled_in: Iterable[str] = ()
) -> list[str]:
    """Problems with a component's name and keyword arguments, without building it."""
    try:
        fn = resolve(kind, name, key=f"{key}.name")
    except UserError as err:
        return err.problems
    problems = check_arguments(fn, kwargs, key=key, kind=kind, filled_in=filled_in)
    lr_lambda = kwargs.get("lr_lambda")
    if kind == "schedulers" and isinstance(lr_lambda, str):  # LambdaLR, MultiplicativeLR
        try:
            import_path(lr_lambda, key=f"{key}.lr_lambda")
        except UserError as err:
            problems += err.problems
    return problems

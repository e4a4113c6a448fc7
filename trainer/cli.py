"""The `trainer` command: thin wrappers that parse, call and print; user errors exit 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperCommand

from trainer.errors import ERROR_PREFIX, Interrupted, TrainingError, UserError
from trainer.user_path import current_directory_last

if TYPE_CHECKING:
    from trainer.config import Config, Origins

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train PyTorch models from a YAML config: fit, groups, schedule, inspect, export.",
)

MORE = "[CONFIG...] [KEY=VALUE]..."
ConfigPath = Annotated[
    str, typer.Argument(metavar="CONFIG", help="YAML config file (it may name a `base:`).")
]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        metavar=MORE,
        help="More config files, merged left to right over the first, then dotted overrides "
        "(optimizer.lr=0.1) and deletions (~optimizer.momentum), applied in order.",
    ),
]


class ConfigCommand(TyperCommand):
    """A command taking `CONFIG [CONFIG...] [KEY=VALUE]...`, shown so in its usage line."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:  # ctx: typer's own click.Context
        shown = {"config": "CONFIG", "overrides": MORE}
        pieces = [self.options_metavar or ""]
        for param in self.get_params(ctx):
            pieces += [shown[param.name]] if param.name in shown else param.get_usage_pieces(ctx)
        return pieces


class Kind(str, Enum):
    models = "models"
    datasets = "datasets"
    losses = "losses"
    optimizers = "optimizers"
    schedulers = "schedulers"
    transforms = "transforms"
    metrics = "metrics"
    steps = "steps"


def version_lines() -> list[str]:
    """The versions `trainer --version` prints: this package, python, torch and its devices."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch  # only here: --version says what torch sees

    try:
        package = version("trainer")
    except PackageNotFoundError:  # run from a source tree that was never installed
        package = "unknown (not installed)"
    if torch.version.cuda is None:
        cuda = "CUDA: not built in"
    elif torch.cuda.is_available():
        count = torch.cuda.device_count()
        cuda = f"CUDA {torch.version.cuda} available: yes, {count} device{'s' * (count != 1)}"
    else:
        cuda = f"CUDA {torch.version.cuda} available: no"
    mps = "yes" if torch.backends.mps.is_available() else "no"
    return [
        f"trainer {package}",
        f"python {platform.python_version()}",
        f"torch {torch.__version__} ({cuda}; MPS available: {mps})",
    ]


def print_version(value: bool) -> None:
    """The --version option's callback: print the versions and exit 0."""
    if value:
        sys.stdout.write("\n".join(version_lines()) + "\n")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=print_version,
            is_eager=True,
            help="Print the versions of trainer, python and torch, and the devices torch sees.",
        ),
    ] = False,
) -> None:
    """The options before a command: --version, and typer's shell completion."""


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print UserErrors as `error: <key>: <problem>` lines on stderr and exit 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as err:
            stderr = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
            for problem in err.problems:
                stderr.print(f"{ERROR_PREFIX}{problem}")
            raise typer.Exit(2) from None
        except TrainingError as err:
            Console(stderr=True, markup=False, highlight=False, soft_wrap=True).print(
                f"error: {err}"
            )
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            Console(stderr=True).print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def config_arguments(config: str, rest: list[str] | None) -> tuple[list[str], list[str]]:
    """`CONFIG [CONFIG...] [KEY=VALUE]...` as (config files, overrides): after the first
    CONFIG, an argument with `=` or starting with `~` is an override, any other a config file;
    a config file after an override is an error."""
    files, overrides = [config], []
    for argument in rest or []:
        if "=" in argument or argument.startswith("~"):
            overrides.append(argument)
        elif overrides:
            raise UserError(
                f"{argument}: config files come before KEY=VALUE overrides (it follows "
                f"{overrides[0]!r}); an override is KEY=VALUE, a deletion ~KEY"
            )
        else:
            files.append(argument)
    return files, overrides


def load_checked_config(config: str, rest: list[str] | None) -> Config:
    """The config files merged, overridden and validated; where the schema refuses them, the
    components its valid sections name are checked too, so one run lists every problem
    (exit 2)."""
    return checked_config_and_origins(config, rest)[0]


def checked_config_and_origins(config: str, rest: list[str] | None) -> tuple[Config, Origins]:
    """load_checked_config, and where each key of the raw config came from."""
    from trainer.config import ConfigError, name_origins, read_configs, validate_config

    files, overrides = config_arguments(config, rest)
    composed = read_configs(files, overrides)
    try:
        return validate_config(composed.raw, composed.origins), composed.origins
    except ConfigError as err:
        from trainer.components.checks import check_components  # imports torch: errors only

        named = name_origins(check_components(err.components), composed.origins)
        raise UserError(err.problems + named) from None


def warn(line: str) -> None:
    """A `warning: ...` line on stderr (what a command left out, and why)."""
    Console(stderr=True, markup=False, highlight=False, soft_wrap=True).print(f"warning: {line}")


FIT_HELP = (
    "Train: build everything the config names, then run the loop.\n\n"
    "A step is one call of the training step, over one accumulation window of "
    "trainer.accumulate batches; the supervised step updates each optimizer once per step. "
    "trainer.max_steps, trainer.log_every and checkpoint.every_steps count steps; a custom "
    "step's optimizer updates are logged as updates/<optimizer>."
)


@app.command(help=FIT_HELP, cls=ConfigCommand)
@user_errors
def fit(
    config: ConfigPath,
    overrides: Overrides = None,
    resume: Annotated[
        str | None,
        typer.Option(help="A checkpoint to resume from, or 'auto' for this run's newest."),
    ] = None,
    reset_optimizer: Annotated[
        bool, typer.Option(help="With --resume: load the weights only; fresh optimizer.")
    ] = False,
    nproc: Annotated[
        int, typer.Option(help="Processes on this machine, started with torchrun.", min=1)
    ] = 1,
) -> None:
    """Train: build everything the config names, then run the loop."""
    import os
    import shlex

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        checked = load_checked_config(config, overrides)  # bad input: exit 2 here, not in N
        from trainer.engine.distributed import launch

        argv = ["fit", config, *(overrides or [])]
        argv += [f"--resume={resume}"] if resume else []
        argv += ["--reset-optimizer"] if reset_optimizer else []
        raise typer.Exit(launch(nproc, argv, shutdown_timeout_s=checked.trainer.dist_timeout))
    from trainer.engine.loop import fit as run_fit

    try:
        run_fit(
            load_checked_config(config, overrides), resume=resume, reset_optimizer=reset_optimizer
        )
    except Interrupted as stopped:
        world = os.environ.get("WORLD_SIZE", "1")
        same_machine = world != "1" and world == os.environ.get("LOCAL_WORLD_SIZE")
        again = ["--nproc", world] if same_machine else []  # as launched: torchrun or --nproc
        command = shlex.join(["trainer", "fit", config, *(overrides or []), *again])
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone prints
            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"interrupted: saved {stopped.checkpoint}\nresume with: {command} "
                f"--resume {shlex.quote(stopped.checkpoint)}",
                markup=False,
            )
        raise typer.Exit(130) from None


@app.command("eval", cls=ConfigCommand)
@user_errors
def evaluate(
    config: ConfigPath,
    overrides: Overrides = None,
    *,
    checkpoint: Annotated[
        str, typer.Option(help="The checkpoint to evaluate: .pt file or sharded directory.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ema: Annotated[
        bool,
        typer.Option(
            "--ema", help="Evaluate the checkpoint's EMA weights (trainer.ema): val/ema/<metric>."
        ),
    ] = False,
) -> None:
    """Validation metrics of a checkpoint's weights on the config's validation data."""
    import json

    from trainer.engine.evaluate import evaluate_checkpoint
    from trainer.runs.report import number

    metrics = evaluate_checkpoint(load_checked_config(config, overrides), checkpoint, ema=ema)
    if as_json:
        sys.stdout.write(json.dumps(metrics) + "\n")
    else:
        sys.stdout.write("  ".join(f"{k} {number(v)}" for k, v in metrics.items()) + "\n")


@app.command()
@user_errors
def inspect(
    checkpoint: Annotated[
        str,
        typer.Argument(metavar="CHECKPOINT", help="A checkpoint: .pt file or sharded directory."),
    ],
) -> None:
    """Epoch, step, lr per group, metrics, best and config of a checkpoint."""
    from trainer.runs.report import checkpoint_summary
    from trainer.state.checkpoint import load_checkpoint

    sys.stdout.write(checkpoint_summary(load_checkpoint(checkpoint, option="CHECKPOINT")) + "\n")


@app.command()
@user_errors
def export(
    checkpoint: Annotated[
        str,
        typer.Argument(metavar="CHECKPOINT", help="A checkpoint: .pt file or sharded directory."),
    ],
    out: Annotated[
        str, typer.Argument(metavar="OUT", help="The file to write: .safetensors or .pt.")
    ],
    prefix: Annotated[
        str | None,
        typer.Option(
            help="Keep only the keys that start with PREFIX, without it (e.g. module., "
            "generator.); a prefix no key has is an error."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    ema: Annotated[
        bool,
        typer.Option("--ema", help="Write the EMA weights (trainer.ema), by the model's names."),
    ] = False,
) -> None:
    """Write a checkpoint's model weights as one file that needs no runner: OUT.safetensors
    (safetensors.torch.load_file) or OUT.pt (model.load_state_dict(torch.load(OUT,
    weights_only=True))). An existing OUT is replaced only with --force."""
    from trainer.tools.export import export_weights

    sys.stdout.write(export_weights(checkpoint, out, prefix=prefix, force=force, ema=ema) + "\n")


@app.command()
@user_errors
def runs(
    directory: Annotated[
        str, typer.Argument(metavar="[DIR]", help="Where the runs are (a run directory too).")
    ] = "runs",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The runs in DIR (and a sweep's trials in DIR/<study>/): status, progress, best value,
    last metrics, differing config keys."""
    import json
    from pathlib import Path

    from trainer.runs import listing as run_dirs
    from trainer.runs.report import make_console

    summaries, differing = run_dirs.compare(run_dirs.find_runs(Path(directory)))
    for summary in summaries:
        for line in summary.warnings:
            warn(line)
    if as_json:
        sys.stdout.write(json.dumps(run_dirs.runs_json(summaries, differing), indent=2) + "\n")
        return
    console = make_console()
    if not summaries:
        console.print(f"no runs in {directory}", markup=False)
        return
    console.print(run_dirs.runs_table(summaries, differing))
    for summary in summaries:
        if summary.reason and summary.status != "stopped":
            console.print(f"{summary.name}: {summary.reason}", markup=False)


class Axis(str, Enum):
    step = "step"
    epoch = "epoch"


@app.command()
@user_errors
def plot(
    run: Annotated[
        list[str], typer.Argument(metavar="RUN...", help="Run directories or names under runs/.")
    ],
    metric: Annotated[
        list[str] | None,
        typer.Option(help="A metric to draw (repeatable); default train/loss and val/*."),
    ] = None,
    x: Annotated[Axis, typer.Option(help="The horizontal axis.")] = Axis.step,
    out: Annotated[str | None, typer.Option(help="Write a PNG (needs matplotlib).")] = None,
) -> None:
    """Metric curves of one or several runs: a terminal chart, or a PNG with --out."""
    from trainer.runs import curves
    from trainer.runs.report import make_console

    records = curves.load_runs(run, warn=warn)
    panels = curves.collect(records, metric or curves.default_metrics(records), x=x.value)
    console = make_console()
    if out:
        curves.write_png(panels, out, x=x.value)
        console.print(f"wrote {out}", markup=False)
        return
    for name, series in panels.items():
        console.print(curves.chart(series, title=name, x=x.value), markup=False)


@app.command(cls=ConfigCommand)
@user_errors
def groups(
    config: ConfigPath,
    overrides: Overrides = None,
    names: Annotated[bool, typer.Option("--names", help="List every parameter.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the resolved param groups without training (the model is built on `meta`)."""
    import json

    from trainer.components.previews import plan_param_groups
    from trainer.engine.sharding import matching_modules, units_of
    from trainer.runs import report

    loaded = load_checked_config(config, overrides)
    model, planned = plan_param_groups(loaded)
    reports = {plan.spec.name: plan.report for plan in planned}
    fsdp = loaded.trainer.sharded
    units = units_of(model, loaded) if fsdp else []
    checkpointed = matching_modules(
        model, loaded.trainer.activation_checkpointing, key="trainer.activation_checkpointing"
    )
    if as_json:
        document = report.groups_json(reports, several=loaded.several_optimizers)
        if fsdp:
            document["fsdp_units"] = [{"module": n, "parameters": c} for n, c in units]
        if checkpointed:
            document["activation_checkpointing"] = checkpointed
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    console = report.make_console()
    for name, groups_report in reports.items():
        title = name if loaded.several_optimizers else None
        console.print(report.groups_table(groups_report, optimizer=title))
    console.print(report.groups_footer(planned[0].report), markup=False)
    for line in report.sharding_lines(units, checkpointed):
        console.print(line, markup=False)
    if names:
        console.print(report.names_table(reports, model))


@app.command(cls=ConfigCommand)
@user_errors
def schedule(
    config: ConfigPath,
    overrides: Overrides = None,
    steps: Annotated[bool, typer.Option("--steps", help="Per optimizer step.")] = False,
    plot: Annotated[str | None, typer.Option(help="Write a picture (needs matplotlib).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[
        int, typer.Option(help="Optimizer steps computed at most; a longer run is cut.", min=1)
    ] = 100_000,
) -> None:
    """Print the lr of every group per epoch (or step) without loading data or training."""
    import json

    from trainer.components.previews import plan_schedule
    from trainer.runs import report

    preview = plan_schedule(load_checked_config(config, overrides), per_step=steps, limit=limit)
    table, unit = preview.table, "step" if steps else "epoch"
    if plot:
        report.plot_schedule(table, unit, plot)
    if as_json:
        document = {"interval": unit, "lr": table, "total": preview.total, "cut": preview.cut}
        sys.stdout.write(json.dumps(document) + "\n")
        return
    console = report.make_console()
    console.print(report.schedule_table(table, unit))
    console.print(report.schedule_chart(table, unit), markup=False)
    for note in preview.notes + ([f"wrote {plot}"] if plot else []):
        console.print(note, markup=False)


@app.command("lr-find", cls=ConfigCommand)
@user_errors
def lr_find(
    config: ConfigPath,
    overrides: Overrides = None,
    start: Annotated[float, typer.Option(help="The lr of the first step.")] = 1e-7,
    end: Annotated[float, typer.Option(help="The lr of the last step.")] = 10.0,
    steps: Annotated[int, typer.Option(help="Optimizer steps; the lr grows exponentially.")] = 100,
    plot: Annotated[str | None, typer.Option(help="Write a picture (needs matplotlib).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The lr range test: loss against an exponentially growing lr, and a suggested lr."""
    import json
    import shlex

    from trainer.runs import report
    from trainer.tools import lr_find as range_test

    test = range_test.lr_find(
        load_checked_config(config, overrides), start=start, end=end, steps=steps
    )
    if plot:
        range_test.plot_range_test(test, plot)
    if as_json:
        sys.stdout.write(json.dumps(test.to_json()) + "\n")
        return
    console = report.make_console()
    lines = range_test.summary_lines(
        test, command=shlex.join(["trainer", "fit", config, *(overrides or [])])
    )
    for line in lines[:2]:
        console.print(line, markup=False)
    lrs, smoothed = test.charted()
    span = f"x: {test.lr_key} {lrs[0]:.3g} .. {lrs[-1]:.3g} (log scale)"
    chart = {"smoothed loss": smoothed}
    console.print(report.schedule_chart(chart, "step", x_axis=span), markup=False)
    for line in lines[2:] + ([f"wrote {plot}"] if plot else []):
        console.print(line, markup=False)


@app.command(cls=ConfigCommand)
@user_errors
def sweep(
    config: ConfigPath,
    overrides: Overrides = None,
    space: Annotated[
        str | None, typer.Option(help="SPACE.yaml: dotted config keys -> distributions.")
    ] = None,
    trials: Annotated[
        int, typer.Option(help="Trials this command runs (at most 10000).", min=1, max=10_000)
    ] = 20,
    jobs: Annotated[
        int, typer.Option(help="Trials at once, each its own process (at most 64).", min=1, max=64)
    ] = 1,
    storage: Annotated[
        str | None,
        typer.Option(help="An Optuna RDB URL or a journal file; default runs/<study>/."),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name; default <name>-sweep.")] = None,
    summary: Annotated[
        bool, typer.Option("--summary", help="Print the study's best trials; run none.")
    ] = False,
    plots: Annotated[
        bool, typer.Option("--plots", help="Write history.png and importance.png too.")
    ] = False,
) -> None:
    """Hyperparameter search on Optuna: each trial a `trainer fit` run, pruned per epoch."""
    from trainer.tools.sweep import sweep as run_sweep

    files, sweep_overrides = config_arguments(config, overrides)
    code = run_sweep(
        files,
        sweep_overrides,
        space_path=space,
        trials=trials,
        jobs=jobs,
        storage=storage,
        study_name=study,
        summary_only=summary,
        plots=plots,
    )
    raise typer.Exit(code)


@app.command("config", cls=ConfigCommand)
@user_errors
def show_config(
    config: ConfigPath,
    overrides: Overrides = None,
    origin: Annotated[
        bool,
        typer.Option(
            "--origin",
            help="Say where each value came from: `# file:line`, `# override KEY=VALUE` or "
            "`# default`.",
        ),
    ] = False,
) -> None:
    """Validate the merged config and print it fully resolved (builds nothing, imports no
    torch)."""
    from trainer.config import config_to_yaml, origin_yaml

    checked, origins = checked_config_and_origins(config, overrides)
    sys.stdout.write(origin_yaml(checked.to_dict(), origins) if origin else config_to_yaml(checked))


@app.command()
@user_errors
def schema(
    out: Annotated[
        str | None, typer.Option(help="Write the schema to OUT instead of printing it.")
    ] = None,
) -> None:
    """The JSON Schema of a config file, for editors: `trainer schema > trainer.schema.json`,
    then `# yaml-language-server: $schema=trainer.schema.json` as a config's first line."""
    from pathlib import Path

    from trainer.config.json_schema import config_json_schema_text

    text = config_json_schema_text()
    if out is None:
        sys.stdout.write(text)
        return
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as err:
        raise UserError(f"--out {out}: cannot write: {err.strerror or err}") from None
    Console(stderr=True, markup=False, highlight=False).print(f"wrote {out}")


@app.command("list")
@user_errors
def list_names(kind: Annotated[Kind | None, typer.Argument(help="What to list.")] = None) -> None:
    """List what a config can name: models, datasets, losses, optimizers, schedulers,
    transforms, metrics, steps."""
    from rich.table import Table

    from trainer.components import registry
    from trainer.runs.report import make_console

    console = make_console()
    for chosen in [kind] if kind else list(Kind):
        try:
            described = registry.describe(chosen.value, compact=kind is None)
        except UserError as err:  # an optional extra is missing: only an error when asked for
            if kind:
                raise
            console.print(f"{chosen.value}: {'; '.join(err.problems)}", markup=False)
            continue
        table = Table(title=chosen.value, title_justify="left")
        table.add_column("name", no_wrap=True)
        table.add_column("description")
        for name, description in described:
            table.add_row(name, description)
        console.print(table)


def main() -> None:
    """The console script: like `python -m trainer`, modules in the current directory import
    (after the standard library and installed packages, which they never shadow); SIGTERM
    stops a command as Ctrl-C does, and a sweep's trial stops with its sweep."""
    current_directory_last()
    from trainer import interrupt

    interrupt.terminate_as_interrupt()
    interrupt.stop_with_parent()
    app()

"""The `trainer` command: thin wrappers that parse, call and print; user errors exit 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console

from trainer.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train PyTorch models from a YAML config: fit, groups, schedule, inspect.",
)

ConfigPath = Annotated[str, typer.Argument(metavar="CONFIG", help="YAML config file.")]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(metavar="[KEY=VALUE]...", help="Dotted overrides, e.g. optimizer.lr=0.1"),
]


class Kind(str, Enum):
    models = "models"
    datasets = "datasets"
    losses = "losses"
    optimizers = "optimizers"
    schedulers = "schedulers"


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print UserErrors as `error: <key>: <problem>` lines on stderr and exit 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as err:
            stderr = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
            for problem in err.problems:
                stderr.print(f"error: {problem}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            Console(stderr=True).print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def fit(config: ConfigPath, overrides: Overrides = None) -> None:
    """Train: build everything the config names, then run the loop."""
    from trainer.config import load_config
    from trainer.loop import fit as run_fit

    run_fit(load_config(config, overrides or []))


@app.command("config")
@user_errors
def show_config(config: ConfigPath, overrides: Overrides = None) -> None:
    """Validate a config and print it fully resolved (builds nothing, imports no torch)."""
    from trainer.config import config_to_yaml, load_config

    sys.stdout.write(config_to_yaml(load_config(config, overrides or [])))


@app.command("list")
@user_errors
def list_names(kind: Annotated[Kind | None, typer.Argument(help="What to list.")] = None) -> None:
    """List what a config can name: models, datasets, losses, optimizers, schedulers."""
    from rich.table import Table

    from trainer import registry

    console = Console(highlight=False)
    for chosen in [kind] if kind else list(Kind):
        table = Table(title=chosen.value, title_justify="left")
        table.add_column("name", no_wrap=True)
        table.add_column("description")
        for name, description in registry.describe(chosen.value):
            table.add_row(name, description)
        console.print(table)


def main() -> None:
    app()

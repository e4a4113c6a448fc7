"""Building imports only what the config names: the built-in model on the built-in dataset
never imports torchvision (its ops pull in torch._dynamo, seconds of start-up)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = """
import io, sys
from rich.console import Console
from trainer.config import load_config
from trainer.engine.loop import fit
from trainer.components.previews import plan_param_groups

overrides = ["trainer.epochs=1", "data.size=64", "trainer.out_dir=" + sys.argv[2]]
config = load_config(sys.argv[1], overrides)
plan_param_groups(config)
print("groups", "torchvision" in sys.modules)
fit(config, console=Console(file=io.StringIO()))
print("fit", "torchvision" in sys.modules)
"""


def test_the_quickstart_and_groups_on_built_ins_do_not_import_torchvision(tmp_path: Path) -> None:
    quickstart = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(quickstart), str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["groups", "False", "fit", "False"]

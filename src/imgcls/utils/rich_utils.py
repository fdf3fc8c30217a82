"""What a run prints: the config as a tree at the start, the metrics as a table at the end."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

FIRST_FIELDS = (
    "data",
    "model",
    "optimizer",
    "scheduler",
    "callbacks",
    "logger",
    "trainer",
    "paths",
)


@rank_zero_only
def print_config_tree(
    cfg: DictConfig, first: Sequence[str] = FIRST_FIELDS, save_to: Path | None = None
) -> None:
    """Print the resolved config group by group; also save it, since the terminal scrolls away."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    fields = [f for f in first if f in cfg] + [f for f in cfg if f not in first]
    for field in fields:
        branch = tree.add(str(field), style="bold", guide_style="dim")
        value = cfg[field]
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        branch.add(rich.syntax.Syntax(text, "yaml", background_color="default"))
    rich.print(tree)
    if save_to is not None:
        with open(save_to, "w") as f:
            rich.print(tree, file=f)


def metrics_table(metrics: Mapping[str, float], title: str = "Metrics") -> Table:
    table = Table(title=title)
    table.add_column("metric", style="cyan")
    table.add_column("value", justify="right", style="bold")
    for name in sorted(metrics):
        table.add_row(name, f"{metrics[name]:.4f}")
    return table


@rank_zero_only
def print_metrics_table(metrics: Mapping[str, float], title: str = "Metrics") -> None:
    Console().print(metrics_table(metrics, title))

"""utils/rich_utils.py: the config tree a run shows and saves, its groups first; the metrics
table at its end."""

from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console

from imgcls.utils.rich_utils import metrics_table, print_config_tree


def test_the_config_tree_is_printed_and_saved_groups_first(tmp_path: Path, capsys) -> None:
    cfg = OmegaConf.create({"seed": 1, "trainer": {"max_epochs": 3}, "data": {"batch_size": 8}})
    print_config_tree(cfg, save_to=tmp_path / "config_tree.log")
    saved = (tmp_path / "config_tree.log").read_text()
    assert saved.index("data") < saved.index("trainer") < saved.index("seed")
    assert "batch_size: 8" in saved
    assert "max_epochs: 3" in saved
    assert "batch_size: 8" in capsys.readouterr().out


def test_the_metrics_table_lists_every_metric_sorted() -> None:
    console = Console(record=True, width=80)
    console.print(metrics_table({"val/acc": 0.5, "test/acc": 0.25}, title="train metrics"))
    text = console.export_text()
    assert text.index("test/acc") < text.index("val/acc")
    assert "0.2500" in text
    assert "0.5000" in text

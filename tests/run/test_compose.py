"""run/compose.py: a config composed as the command line would (its overrides, its output dir
made, Hydra set up for `${hydra:...}`), and objects built from it, a target's UserError
reaching the user unwrapped."""

from pathlib import Path
from typing import Any

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from imgcls.run.compose import compose_config, instantiate, instantiate_each, set_in_struct
from imgcls.utils.errors import UserError

HERE = __name__  # targets below, as a config names them


def refuses(value: int) -> None:
    raise UserError(f"value={value} is not allowed: a whole number >= 1.")


def breaks(value: int) -> None:
    raise ValueError(f"bad value {value}")


def echo(**kwargs: Any) -> dict[str, Any]:
    return kwargs


# -- composing ----------------------------------------------------------------------------------
def test_compose_config_applies_the_overrides_and_makes_the_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "a" / "run"
    cfg = compose_config(
        "train", ["optimizer.lr=0.25", "model=lenet", f"paths.log_dir={tmp_path}"], out
    )
    assert cfg.optimizer.lr == 0.25
    assert cfg.model.net.name == "lenet"
    assert cfg.paths.output_dir == str(out.resolve())
    assert out.is_dir()
    assert "hydra" not in cfg  # Hydra's own node is Hydra's, not the run's
    assert HydraConfig.get().runtime.output_dir == str(out.resolve())  # ${hydra:...} resolves
    assert cfg.task_name == "train"


def test_compose_config_without_an_output_dir_makes_a_fresh_run_dir(tmp_path: Path) -> None:
    first = compose_config("train", [f"paths.log_dir={tmp_path}"]).paths.output_dir
    second = compose_config("train", [f"paths.log_dir={tmp_path}"]).paths.output_dir
    runs = tmp_path / "train" / "runs"
    assert Path(first).parent == Path(second).parent == runs
    assert first != second  # composed in the same second: a dir each
    assert {p.as_posix() for p in runs.iterdir()} == {first, second}


def test_a_composed_config_keeps_its_output_dir_when_another_is_composed(tmp_path: Path):
    first = compose_config("train", [], tmp_path / "train_run")
    compose_config("eval", ["ckpt_path=x.ckpt"], tmp_path / "eval_run")
    assert first.paths.output_dir == str((tmp_path / "train_run").resolve())


def test_compose_config_composes_every_entry_points_config(tmp_path: Path) -> None:
    cfg = compose_config("eval", ["ckpt_path=x.ckpt"], tmp_path / "eval")
    assert (cfg.task_name, cfg.ckpt_path) == ("eval", "x.ckpt")


def test_set_in_struct_sets_a_key_the_config_lacks(tmp_path: Path) -> None:
    cfg = compose_config("train", [], tmp_path / "run")
    with pytest.raises(Exception, match="limit_train_batches"):
        cfg.trainer.limit_train_batches = 2  # closed to new keys, as Hydra composes it
    set_in_struct(cfg, "trainer.limit_train_batches", 2)
    set_in_struct(cfg, "optimizer.lr", 0.5)
    assert (cfg.trainer.limit_train_batches, cfg.optimizer.lr) == (2, 0.5)


# -- instantiating ------------------------------------------------------------------------------
def test_a_targets_user_error_reaches_the_user_unwrapped() -> None:
    with pytest.raises(UserError) as err:
        instantiate(OmegaConf.create({"_target_": f"{HERE}.refuses", "value": 0}))
    assert type(err.value) is UserError
    assert str(err.value) == "value=0 is not allowed: a whole number >= 1."
    assert err.value.__suppress_context__  # `from None`: no Hydra traceback around it


def test_a_nested_targets_user_error_reaches_the_user_unwrapped() -> None:
    nested = {"_target_": f"{HERE}.echo", "inner": {"_target_": f"{HERE}.refuses", "value": -1}}
    with pytest.raises(UserError, match=r"^value=-1 is not allowed"):
        instantiate(OmegaConf.create(nested))


def test_any_other_error_stays_hydras() -> None:
    with pytest.raises(InstantiationException, match="bad value 3") as err:
        instantiate(OmegaConf.create({"_target_": f"{HERE}.breaks", "value": 3}))
    assert isinstance(err.value.__cause__, ValueError)


def test_targets_get_plain_data_and_call_arguments() -> None:
    made = instantiate(
        OmegaConf.create({"_target_": f"{HERE}.echo", "net": {"name": "lenet"}, "sizes": [1, 2]}),
        extra=3,
    )
    assert made == {"net": {"name": "lenet"}, "sizes": [1, 2], "extra": 3}
    assert type(made["net"]) is dict  # plain data: a checkpoint of it loads weights_only
    assert type(made["sizes"]) is list


def test_instantiate_each_builds_the_entries_that_name_a_target() -> None:
    group = OmegaConf.create(
        {
            "a": {"_target_": f"{HERE}.echo", "n": 1},
            "off": None,  # callbacks.x=null: left out
            "plain": {"n": 2},  # no _target_: not an object
            "b": {"_target_": f"{HERE}.echo", "n": 3},
        }
    )
    assert instantiate_each(group) == [{"n": 1}, {"n": 3}]
    assert instantiate_each(None) == []
    assert instantiate_each(OmegaConf.create({})) == []

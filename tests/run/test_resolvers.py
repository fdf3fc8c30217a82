"""run/resolvers.py: the resolvers the configs use, registered by whatever composes a config,
idempotently; `${project_root:}` is $PROJECT_ROOT where set, else this checkout."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from imgcls import REPO_ROOT
from imgcls.run.resolvers import RESOLVERS, project_root, register_resolvers


def test_project_root_is_the_checkout_wherever_the_command_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROJECT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert project_root() == str(REPO_ROOT)
    assert (Path(project_root()) / "configs" / "train.yaml").is_file()
    assert (Path(project_root()) / "src" / "imgcls" / "run" / "resolvers.py").is_file()


def test_project_root_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    assert project_root() == str(tmp_path)


def test_the_paths_config_follows_project_root(make_cfg, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PROJECT_ROOT", "/data/elsewhere")
    cfg = make_cfg()
    assert cfg.paths.root_dir == "/data/elsewhere"
    assert cfg.paths.data_dir == "/data/elsewhere/data"


def test_registering_twice_is_harmless_and_every_resolver_works(tmp_path: Path) -> None:
    register_resolvers()
    register_resolvers()  # OmegaConf itself refuses a name registered twice
    assert all(OmegaConf.has_resolver(name) for name in RESOLVERS)
    cfg = OmegaConf.create(
        {"root": "${project_root:}", "run": "${unique_dir:" + str(tmp_path) + ",t}"}
    )
    assert cfg.root == project_root()
    assert cfg.run == str(tmp_path / "t")
    assert cfg.run == str(tmp_path / "t")  # resolved once per config: no t_2 on a second read
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]

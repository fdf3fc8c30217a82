"""Shared fixtures: compose a config exactly as the command line would, writing into a tmp dir."""

import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Nothing downloads in tests: the Hugging Face libraries read these once, when first imported
# (test modules import them at collection, before any fixture runs)
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

import torch
from omegaconf import DictConfig

from imgcls.run.compose import compose_config
from imgcls.utils.machine import available_cpus

# Quiet and quick: no config tree, no live progress bar in captured output.
QUIET = {
    # and no Grad-CAM maps in the report (a forward and backward at every test's end):
    # tests/callbacks/test_eval_report.py asks for them
    "train": [
        "extras.print_config=false",
        "++callbacks.rich_progress_bar=null",
        "++callbacks.eval_report.explain=false",
    ],
    "eval": ["extras.print_config=false"],
}


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """make_cfg(*overrides, config_name="train") -> a composed config whose run dir is tmp_path."""

    def make(
        *overrides: str, config_name: str = "train", run_dir: Path | None = None
    ) -> DictConfig:
        quiet = QUIET.get(config_name, [])
        return compose_config(
            config_name,
            [f"paths.log_dir={tmp_path / 'logs'}", *quiet, *overrides],
            output_dir=run_dir or tmp_path / "run",
        )

    return make


@pytest.fixture
def command_exit(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int | str | None]:
    """command_exit(main, *argv) -> the exit code (or one-line message) of a command's entry
    point run in this process on `argv`, as a user's shell starts it (HYDRA_FULL_ERROR unset:
    one line, exit 1). Hydra sets up its logging before any job starts; the worker's own is put
    back after the test."""

    def run(main: Callable[[], object], *argv: str) -> int | str | None:
        monkeypatch.setattr(sys, "argv", list(argv))
        monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
        root = logging.getLogger()
        monkeypatch.setattr(root, "handlers", root.handlers[:])
        monkeypatch.setattr(root, "level", root.level)
        with pytest.raises(SystemExit) as exit_:
            main()
        return exit_.value.code

    return run


@pytest.fixture
def command(monkeypatch: pytest.MonkeyPatch) -> Callable[..., object]:
    """command(main, *argv) -> what a command's entry point returns, run in this process on
    `argv` as a user's shell starts it (Hydra writes its .hydra/ record as for a real run); the
    worker's own logging is put back after the test."""

    def run(main: Callable[[], object], *argv: str) -> object:
        monkeypatch.setattr(sys, "argv", list(argv))
        root = logging.getLogger()
        monkeypatch.setattr(root, "handlers", root.handlers[:])
        monkeypatch.setattr(root, "level", root.level)
        return main()

    return run


@pytest.fixture(scope="session", autouse=True)
def offline_weight_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Pretrained weights come from a session cache that tests fill (data_factory's
    cache_torchvision_weights), never from the user's cache or the network."""
    home = tmp_path_factory.mktemp("torch_home")
    saved = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home
    if saved is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = saved


def pytest_configure(config: pytest.Config) -> None:
    """Under `pytest -n N` every worker, and the runs it starts, takes its share of the cores
    (torch's default, every core per process, would oversubscribe them N times over)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, available_cpus() // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `slow` go first, the longest (`slow(seconds=N)`) at the very front. Under
    `pytest -n N --dist worksteal` the first worker's share of the queue starts with them, the
    others start on the short tests and then take over (steal) the first worker's queued tests
    from its end: the suite ends when its last test does, and a long test left near the end of
    a queue would run alone there. Tests marked `cuda` run only where there is a GPU."""

    def order(item: pytest.Item) -> tuple[bool, float]:
        slow = item.get_closest_marker("slow")
        return slow is None, -(slow.kwargs.get("seconds", 0) if slow else 0)

    items.sort(key=order)  # stable: file order otherwise
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make gpu-check runs it on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


pytest_plugins = ["tests.data_factory"]

"""average.py: a run's last or best checkpoints averaged into one that evaluates as any other."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imgcls.average import average
from imgcls.models.loading import load_classifier
from imgcls.train import train
from imgcls.utils.errors import UserError


@pytest.fixture(scope="module")
def run_with_every_epoch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imgcls.run.compose import compose_config

    tmp = tmp_path_factory.mktemp("average")
    cfg = compose_config(
        "train",
        [
            f"paths.log_dir={tmp / 'logs'}",
            "extras.print_config=false",
            "model=cifar_quick",
            "callbacks.model_checkpoint.save_top_k=-1",
            "trainer.max_epochs=4",
            "+trainer.limit_train_batches=3",
            "test=false",
        ],
        output_dir=tmp / "run",
    )
    train(cfg)
    return tmp / "run"


def states(run: Path, names: list[str]) -> list[dict[str, torch.Tensor]]:
    folder = run / "checkpoints"
    return [torch.load(folder / n, weights_only=True)["state_dict"] for n in names]


def test_the_last_n_are_averaged_tensor_by_tensor(run_with_every_epoch: Path) -> None:
    out = average(run_with_every_epoch, last=3)
    assert out == run_with_every_epoch / "checkpoints" / "average_last3.ckpt"
    merged = torch.load(out, weights_only=True)
    names = ["epoch_001.ckpt", "epoch_002.ckpt", "epoch_003.ckpt"]
    assert merged["imgcls_averaged_from"] == names
    inputs = states(run_with_every_epoch, names)
    for key, value in merged["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in inputs) / 3)
    model = load_classifier(out)  # evaluated as any checkpoint of ours
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(UserError, match="exists"):
        average(run_with_every_epoch, last=3)  # never over finished work


def test_a_lora_runs_checkpoints_are_merged_then_averaged_into_a_plain_net(
    tmp_path: Path,
) -> None:
    """Adapters averaged factor by factor would give mean(B) @ mean(A), not the mean of the
    updates: each checkpoint is merged into plain weights first, and the average is plain."""
    from imgcls.models.lora import merged_weights
    from tests.models.test_lora import VIT, quiet_cfg

    every = ["callbacks.model_checkpoint.save_top_k=-1", "trainer.max_epochs=2"]
    train(quiet_cfg(tmp_path, *VIT, "optimizer.lr=0.05", *every))
    out = average(tmp_path / "run", last=2)
    averaged = torch.load(out, weights_only=True)
    assert averaged["hyper_parameters"]["lora"] is None
    assert not [k for k in averaged["state_dict"] if "lora_" in k or "base_layer" in k]
    names = ["epoch_000.ckpt", "epoch_001.ckpt"]
    lora = torch.load(tmp_path / "run" / "checkpoints" / names[0], weights_only=True)[
        "hyper_parameters"
    ]["lora"]
    plain = [merged_weights(state, lora) for state in states(tmp_path / "run", names)]
    for key, value in averaged["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (plain[0][key] + plain[1][key]) / 2)
    assert load_classifier(out)(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_the_best_n_follow_the_runs_monitor(run_with_every_epoch: Path) -> None:
    folder = run_with_every_epoch / "checkpoints"
    scores = {}
    for path in folder.glob("epoch_*.ckpt"):
        state = torch.load(path, weights_only=True)["callbacks"]
        (callback,) = (v for k, v in state.items() if k.startswith("CheckpointWithBestLink"))
        scores[path.name] = float(callback["current_score"])  # val/acc, higher is better
    best_two = sorted(sorted(scores, key=scores.get, reverse=True)[:2])
    out = average(run_with_every_epoch, best=2, out=run_with_every_epoch / "soup.ckpt")
    assert torch.load(out, weights_only=True)["imgcls_averaged_from"] == best_two


def test_the_command_refuses_in_one_line(run_with_every_epoch: Path) -> None:
    with pytest.raises(UserError, match="4 per-epoch checkpoints, 5 are needed"):
        average(run_with_every_epoch, last=5)
    with pytest.raises(UserError, match="2 or more"):
        average(run_with_every_epoch, last=1)
    result = subprocess.run(
        [sys.executable, "-m", "imgcls.average", str(run_with_every_epoch), "--best", "9"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"UserError: {run_with_every_epoch / 'checkpoints'} holds 4 per-epoch checkpoints, 9 are "
        "needed: train with callbacks.model_checkpoint.save_top_k=9."
    ]

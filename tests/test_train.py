"""train(cfg) and evaluate(cfg) in-process: what a run produces, and that the numbers agree."""

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.utilities import rank_zero_only

from imgcls.callbacks.ema import EMA
from imgcls.callbacks.preemption import PreemptionCheckpoint
from imgcls.eval import evaluate
from imgcls.run.task import apply_extras
from imgcls.train import build_components, metric_value, seed_run, train
from imgcls.utils.errors import UserError

# A small fast net so these tests take seconds, not minutes.
QUICK = ["model=cifar_quick", "optimizer.lr=0.05"]
FOUR_BATCHES = "+trainer.limit_train_batches=4"


def test_fast_dev_run(make_cfg) -> None:
    metrics, objects = train(make_cfg("debug=fdr"))
    assert objects["trainer"].fast_dev_run
    assert {"train/loss", "val/acc", "test/acc", "test/acc_top5"} <= metrics.keys()


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer=adamw", "optimizer.lr=3e-4", "scheduler=warmup_cosine"],
        ["scheduler=onecycle"],
        ["scheduler=step", "scheduler.step_size=1"],
        ["scheduler=none", "optimizer=adam", "optimizer.imgcls.no_decay_norm_and_bias=true"],
    ],
    ids=lambda o: " ".join(o),
)
def test_optimizer_and_schedule_drive_training(make_cfg, overrides: list[str]) -> None:
    cfg = make_cfg(*QUICK, "trainer.max_epochs=2", FOUR_BATCHES, *overrides)
    _, objects = train(cfg)
    trainer = objects["trainer"]
    assert trainer.global_step == 8
    lr_now = trainer.optimizers[0].param_groups[0]["lr"]
    lr_set = cfg.optimizer.lr
    if cfg.scheduler.get("_target_"):
        assert lr_now != pytest.approx(lr_set)  # the schedule moved the lr
    else:
        assert lr_now == pytest.approx(lr_set)


def test_resume_continues_epoch_count(make_cfg, tmp_path: Path) -> None:
    """Also with balanced class weights and an EMA of the weights (a copy of the model made
    before the weights are worked out): the class weights resolved from the train split are in
    the checkpoint and back in the resumed loss."""
    balanced = ["model.class_weights=balanced", "callbacks=[default,ema]"]
    # a schedule that does not span the run: a resume may lengthen it
    _, first = train(
        make_cfg(
            *QUICK, FOUR_BATCHES, *balanced, "scheduler=none", "trainer.max_epochs=2", "test=false"
        )
    )
    steps_per_epoch = first["trainer"].global_step // 2
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"

    cfg = make_cfg(
        *QUICK,
        FOUR_BATCHES,
        *balanced,
        "scheduler=none",
        "trainer.max_epochs=3",
        f"ckpt_path={last}",
        run_dir=tmp_path / "resumed",
    )
    _, resumed = train(cfg)
    trainer = resumed["trainer"]
    assert trainer.current_epoch == 3
    assert trainer.global_step == 3 * steps_per_epoch
    # a checkpoint of a run resumes into that run dir
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # saved at the last validation's end: epoch 2 (of 0-2) done
    assert (saved["epoch"], saved["global_step"]) == (2, 3 * steps_per_epoch)
    weights = saved["hyper_parameters"]["class_weights"]
    assert len(weights) == 10
    assert len(set(weights)) > 1
    assert saved["state_dict"]["objective.criterion.weight"].tolist() == pytest.approx(weights)
    assert resumed["model"].objective.criterion.weight.tolist() == pytest.approx(weights)
    assert not (tmp_path / "resumed" / "checkpoints").exists()


def test_unknown_optimized_metric_is_reported(make_cfg) -> None:
    with pytest.raises(UserError, match="val/acc_best"):
        metric_value({"val/acc_best": 0.9}, "val/accuracy")


@pytest.mark.slow(seconds=100)  # one core's time for the whole default run: it starts first
def test_default_run_reaches_95_percent_and_leaves_a_complete_run_dir(
    make_cfg, tmp_path: Path
) -> None:
    """`python train.py` as shipped: the embedded digits with the default model and recipe.
    The one long run of the suite, so every check of what a finished run leaves is made on it:
    its files, its checkpoints as plain data, and eval.py giving the same test metrics."""
    cfg = make_cfg("extras.print_config=true")
    apply_extras(cfg)
    metrics, _ = train(cfg)
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text()) == pytest.approx(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    assert (run / "config_tree.log").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    ckpts = run / "checkpoints"
    (best_epoch,) = ckpts.glob("epoch_*.ckpt")  # save_top_k=1: the best epoch's only
    assert {p.name for p in ckpts.iterdir()} == {best_epoch.name, "best.ckpt", "last.ckpt"}
    assert (ckpts / "best.ckpt").resolve() == best_epoch.resolve()

    hparams = torch.load(ckpts / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["net"] == {
        "name": "resnet_cifar",
        "weights": None,
        "pretrained": False,
        "weights_path": None,
        "head_init": "default",
        "drop_path_rate": None,
        "grad_checkpointing": False,
    }
    assert hparams["preprocessing"] == {
        "resize": 32,
        "crop": 32,
        "mean": [0.305, 0.305, 0.305],
        "std": [0.323, 0.323, 0.323],
    }
    assert hparams["class_names"] == [str(d) for d in range(10)]
    assert isinstance(hparams["optimizer"], dict)
    assert hparams["optimizer"]["_target_"] == "torch.optim.SGD"

    eval_cfg = make_cfg(
        f"ckpt_path={ckpts / 'best.ckpt'}", config_name="eval", run_dir=tmp_path / "eval"
    )
    eval_metrics, _ = evaluate(eval_cfg)
    for name in ("test/acc", "test/acc_top5", "test/loss"):
        assert eval_metrics[name] == pytest.approx(metrics[name], abs=1e-6), name
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["test/acc"] == pytest.approx(metrics["test/acc"])
    assert metrics["val/acc_best"] >= metrics["val/acc"]
    assert metrics["test/acc"] >= 0.95  # last: a miss here still shows the checks above


def test_an_unseeded_run_draws_a_seed_its_ddp_processes_inherit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """seed=null: rank 0 draws afresh each run (Lightning alone would take 0, or the seed an
    earlier run of the process left in PL_GLOBAL_SEED); a DDP process it started takes the one
    it inherited, so every rank shuffles alike."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")  # an earlier run's
    seed_run(None)
    first = torch.initial_seed()
    seed_run(None)
    assert len({first, torch.initial_seed(), 42, 0}) == 4
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    monkeypatch.setenv("PL_GLOBAL_SEED", str(first))  # as rank 0 left it for its children
    seed_run(None)
    assert torch.initial_seed() == first


def test_the_preemption_stop_comes_after_every_other_callbacks_batch_end(make_cfg) -> None:
    """It raises at a batch's end: an EMA listed after it would miss that step's update (and a
    resume would not be the uninterrupted run); only what Lightning appends itself comes after
    it (checkpointing, its default progress bar and summary)."""
    callbacks = build_components(make_cfg("callbacks=[default,ema]"))["trainer"].callbacks
    at = next(i for i, c in enumerate(callbacks) if isinstance(c, PreemptionCheckpoint))
    assert any(isinstance(c, EMA) for c in callbacks[:at])
    lightnings = ModelCheckpoint | ProgressBar | ModelSummary
    assert all(isinstance(c, lightnings) for c in callbacks[at + 1 :])

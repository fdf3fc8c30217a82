"""Train, then test the best checkpoint: `python train.py [overrides]` or `imgcls-train`.

`train(cfg)` runs on any composed config, with or without `@hydra.main` (tests call it
directly); `main()` is the command line and returns the value a sweeper optimizes.
"""

import json
import logging
import os
import secrets
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from imgcls.callbacks.preemption import PreemptionCheckpoint
from imgcls.data.features import FeatureDataModule
from imgcls.models.distill import teacher_for
from imgcls.models.features import FeatureExtractor
from imgcls.run.compose import instantiate, instantiate_each
from imgcls.run.dirs import held
from imgcls.run.numerics import configure_numerics, nondeterministic_ops_explained
from imgcls.run.record import Preempted, save_metrics, scalar_metrics
from imgcls.run.settle import settle
from imgcls.run.task import task_main
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.rich_utils import print_metrics_table

log = get_logger(__name__)


def build_components(cfg: DictConfig) -> dict[str, Any]:
    """Datamodule, model, callbacks, loggers and trainer, in the order each needs the last."""
    log.info(f"Data: {cfg.data._target_}")
    datamodule = instantiate(cfg.data)
    log.info(f"Model: {cfg.model._target_} ({cfg.model.net.name})")
    model = instantiate(
        cfg.model,
        _recursive_=False,
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
        preprocessing=datamodule.contract.as_dict(),
        optimizer=cfg.optimizer,
        scheduler=cfg.get("scheduler"),
    )
    if cfg.get("train"):  # a frozen teacher to distil from (model.distill), never saved
        model.teacher = teacher_for(cfg.model.get("distill"), model)
    probe = cfg.model.get("probe") or {}
    if cfg.get("train") and probe.get("enabled"):  # the head trains on cached features
        net_config = OmegaConf.to_container(cfg.model.net, resolve=True)
        for key in ("head_init", "weights", "pretrained", "weights_path"):  # in the hash
            net_config.pop(key, None)
        features = FeatureExtractor(model.net, model.head_name, net_config, probe.get("cache_dir"))
        datamodule = FeatureDataModule(datamodule, features)
    loggers = instantiate_each(cfg.get("logger"))
    callbacks = without_logger_callbacks(instantiate_each(cfg.get("callbacks")), loggers)
    # the preemption stop raises at a batch's end: every other callback's hook of that batch
    # (an EMA's update, the step loss) runs before it (Lightning puts checkpointing last)
    callbacks.sort(key=lambda callback: isinstance(callback, PreemptionCheckpoint))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    return {
        "cfg": cfg,
        "datamodule": datamodule,
        "model": model,
        "callbacks": callbacks,
        "logger": loggers,
        "trainer": trainer,
    }


def without_logger_callbacks(callbacks: list[Any], loggers: list[Any]) -> list[Any]:
    """A run without a logger (`logger=null`) still trains: the callbacks that only write to a
    logger, and refuse to start without one, step aside."""
    if loggers:
        return callbacks
    needing = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
    for callback in needing:
        log.info(f"No logger: {type(callback).__name__} left out")
    return [c for c in callbacks if c not in needing]


def metric_value(metrics: Mapping[str, float], name: str | None) -> float | None:
    """The value a sweeper optimizes; a missing name is a config mistake, so say which exist."""
    if not name:
        return None
    if name not in metrics:
        logged = ", ".join(sorted(metrics))
        raise UserError(f"optimized_metric={name!r} was not logged. Logged metrics: {logged}")
    return metrics[name]


def run_hyperparameters(cfg: DictConfig, model: Any) -> dict[str, Any]:
    """What loggers record for a run: the whole config, flattened, plus the model's size."""
    params = OmegaConf.to_container(cfg, resolve=True)
    flat = dict(_flatten(params))
    flat["model/params_total"] = sum(p.numel() for p in model.parameters())
    flat["model/params_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return flat


def _flatten(tree: Any, prefix: str = "") -> Any:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}{key}/")
    else:
        yield prefix.rstrip("/"), tree if isinstance(tree, int | float | str | bool) else str(tree)


def best_checkpoint(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
        return callback.best_model_path
    return None


def seed_run(seed: int | None) -> None:
    """Every RNG from `seed`; with None, from one drawn now and logged. Lightning keeps it in
    PL_GLOBAL_SEED, which the DDP processes it starts later inherit and take: all ranks order
    the data alike (each drawing its own would duplicate and skip images)."""
    if seed is None:
        inherited = os.environ.get("PL_GLOBAL_SEED") if rank_zero_only.rank > 0 else None
        seed = int(inherited) if inherited is not None else secrets.randbelow(2**31)
        log.info(f"seed=null: this run's seed is {seed} (seed={seed} repeats it)")
    L.seed_everything(seed, workers=True)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    settle(cfg)  # the lr, a resume's checkpoint and run dir, ...: the config is final from here
    configure_numerics(cfg)
    seed_run(cfg.get("seed"))
    with held(cfg.paths.output_dir):  # no one else trains there
        return fit_and_test(cfg, build_components(cfg))


def fit_and_test(cfg: DictConfig, objects: dict[str, Any]) -> tuple[dict[str, float], dict]:
    trainer: L.Trainer = objects["trainer"]
    model, datamodule = objects["model"], objects["datamodule"]
    for logger in trainer.loggers:
        logger.log_hyperparams(run_hyperparameters(cfg, model))

    if cfg.get("train"):
        log.info("Training")
        preemption = next(
            (c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint)), None
        )
        try:
            with nondeterministic_ops_explained():
                trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        except SIGTERMException as signal:  # callbacks.PreemptionCheckpoint saved last.ckpt
            if preemption is not None and preemption.save_error is not None:
                raise preemption.save_error from signal
            raise Preempted(f"stopped by a signal at step {trainer.global_step}") from signal
        if preemption is not None and preemption.stopped_after_fit:
            raise Preempted(f"signalled as the fit ended (step {trainer.global_step}): not tested")
    metrics = scalar_metrics(trainer.callback_metrics)

    if cfg.get("test"):
        ckpt_path = best_checkpoint(trainer)
        if ckpt_path is None:
            log.warning("No best checkpoint (checkpointing off?): testing the current weights.")
        log.info(f"Testing {ckpt_path or 'current weights'}")
        with nondeterministic_ops_explained():
            trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics |= scalar_metrics(trainer.callback_metrics)

    # Every rank, into its own log (train.log, train_rank1.log): synced metrics must agree.
    logging.getLogger(__name__).info(f"rank {trainer.global_rank} metrics: {json.dumps(metrics)}")
    save_metrics(metrics, cfg.paths.output_dir)
    print_metrics_table(metrics, title=f"{cfg.task_name} metrics")
    return metrics, objects


def train_and_score(cfg: DictConfig) -> float | None:
    """Train, test, and return the optimized metric (what a sweeper maximizes)."""
    metrics, _ = train(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


main = task_main("train", train_and_score)


if __name__ == "__main__":
    main()

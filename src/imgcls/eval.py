"""Evaluate a checkpoint on the test split: `python eval.py ckpt_path=...` or `imgcls-eval`.

The model (architecture, class names) comes from the checkpoint; the data from the `data` group,
which must be the dataset the model was trained on (checked by class names), preprocessed as the
checkpoint was trained (its input contract: run/settle.py).
"""

from typing import Any

from omegaconf import DictConfig

from imgcls.models.loading import load_classifier
from imgcls.run.compose import instantiate, instantiate_each
from imgcls.run.numerics import configure_numerics, nondeterministic_ops_explained
from imgcls.run.record import save_metrics, scalar_metrics
from imgcls.run.settle import settle
from imgcls.run.task import task_main
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.rich_utils import print_metrics_table

log = get_logger(__name__)


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    if not cfg.get("ckpt_path"):
        raise UserError("eval needs a checkpoint: ckpt_path=<run dir>/checkpoints/best.ckpt")
    settle(cfg)  # the checkpoint's input contract and labels into the data config
    configure_numerics(cfg)
    model = load_classifier(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    if model.class_names != datamodule.class_names:
        raise UserError(
            f"The checkpoint was trained on {model.hparams.num_classes} classes "
            f"({', '.join(model.class_names[:5])}, ...) but data={cfg.data._target_} has "
            f"{datamodule.num_classes} ({', '.join(datamodule.class_names[:5])}, ...): "
            "pass the data config the model was trained with."
        )
    trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_each(cfg.get("callbacks")),
        logger=instantiate_each(cfg.get("logger")),
    )
    log.info(f"Testing {cfg.ckpt_path}")
    with nondeterministic_ops_explained():
        trainer.test(model=model, datamodule=datamodule)
    metrics = scalar_metrics(trainer.callback_metrics)
    save_metrics(metrics, cfg.paths.output_dir)
    print_metrics_table(metrics, title=f"{cfg.task_name} metrics")
    return metrics, {"cfg": cfg, "model": model, "datamodule": datamodule, "trainer": trainer}


main = task_main("eval", evaluate)


if __name__ == "__main__":
    main()

"""Evaluate a checkpoint on the test split: `python eval.py ckpt_path=...` or `imgcls-eval`.

The model (architecture, class names) comes from the checkpoint; the data from the `data` group,
which must be the dataset the model was trained on (checked by class names).
"""

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from imgcls import CONFIG_DIR
from imgcls.models.checkpoint import load_classifier
from imgcls.utils import ddp_hydra
from imgcls.utils.config_checks import check_values
from imgcls.utils.errors import UserError
from imgcls.utils.hydra_utils import (
    apply_extras,
    instantiate,
    instantiate_each,
    report_user_errors,
    save_metrics,
    scalar_metrics,
)
from imgcls.utils.logging import get_logger
from imgcls.utils.numerics import configure_numerics, nondeterministic_ops_explained
from imgcls.utils.rich_utils import print_metrics_table

log = get_logger(__name__)


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    if not cfg.get("ckpt_path"):
        raise UserError("eval needs a checkpoint: ckpt_path=<run dir>/checkpoints/best.ckpt")
    check_values(cfg)
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
    save_metrics(metrics, Path(cfg.paths.output_dir) / "metrics.json")
    print_metrics_table(metrics, title=f"{cfg.task_name} metrics")
    return metrics, {"cfg": cfg, "model": model, "datamodule": datamodule, "trainer": trainer}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
@report_user_errors
def main(cfg: DictConfig) -> None:
    ddp_hydra.install()
    apply_extras(cfg)
    with ddp_hydra.ddp_job_scope():
        evaluate(cfg)


if __name__ == "__main__":
    main()

"""Evaluate a checkpoint on the test split: `python eval.py ckpt_path=...` or `imgcls-eval`.

The model (architecture, class names) comes from the checkpoint, or from the model card of a
file export.py wrote (models/exported.py); the data from the `data` group, preprocessed as the
checkpoint was trained (its input contract: run/settle.py). The data's classes are the model's,
or some of them, found by name or by `class_map` (models/class_map.py). A timm model trained
elsewhere, with its own weights, takes a checkpoint's place: `ckpt_path=timm/local-dir:DIR` (a
folder timm's save_for_hf or `imgcls-push --local` wrote) or `ckpt_path=timm/hf-hub:<user>/
<repo>`; its class names are its config's `label_names`, its preprocessing its pretrained
config's. `real_labels=real.json` scores ImageNet's val images against their ReaL label sets
as well (callbacks/real_labels.py).
"""

from typing import Any

from omegaconf import DictConfig

from imgcls.callbacks.real_labels import real_labels_score
from imgcls.models.class_map import scored_on
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
        raise UserError(
            "eval needs a checkpoint: ckpt_path=<run dir>/checkpoints/best.ckpt, or a timm model "
            "with its weights: ckpt_path=timm/local-dir:<folder> or timm/hf-hub:<user>/<repo>"
        )
    settle(cfg)  # the checkpoint's input contract and labels into the data config
    configure_numerics(cfg)
    model = load_classifier(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    scored_on(model, datamodule.class_names, cfg.get("class_map"))  # a subset, or renamed
    callbacks = instantiate_each(cfg.get("callbacks"))
    if cfg.get("real_labels"):
        callbacks.append(real_labels_score(cfg.real_labels, datamodule))
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
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

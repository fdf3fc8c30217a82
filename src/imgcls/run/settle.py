"""Every value a run derives, settled in one place, once, before anything reads them.

A composed config says what the user asked for. A few values a run uses follow from it, from
the machine, from pretrained weights or from an earlier run:
- the lr scaled to the global batch, cuDNN's autotuner off under determinism, per-process
  BatchNorm on CPUs, the metrics of the model's task (run/derived.py);
- what the data gives the model: multi-hot labels for `model.task=multilabel`, and the input
  contract (eval resize and crop, mean and std) of pretrained weights or of the checkpoint a
  run evaluates or resumes: every consumer of a checkpoint preprocesses as it was trained;
- what a resume continues: the checkpoint file, and the run dir it belongs to (run/resume.py).
`settle` checks the values (run/checks.py), works out all of these, holds a resume's
checkpoint to the run (net, classes, schedule) while nothing has been written, and only then
writes them into the config together. From there on the config is read, never rewritten: the
config the run saves (`.hydra/config.yaml`, written again here: Hydra writes it before any of
this) and shows (the config tree) is what it used, and a refused resume leaves every dir as it
was.
"""

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from imgcls.input_contract import InputContract
from imgcls.models.exported import export_hyperparameters, names_an_export
from imgcls.models.loading import read_checkpoint
from imgcls.models.lora import check_resume
from imgcls.models.pretrained import weights_contract
from imgcls.models.zoo import names_a_pretrained_net, pretrained_hyperparameters
from imgcls.run.checks import check_values
from imgcls.run.compose import instantiate, set_in_struct
from imgcls.run.derived import derived_values
from imgcls.run.resume import check_checkpoint_fits, resume_target
from imgcls.utils.logging import get_logger
from imgcls.utils.rich_utils import print_config_tree

log = get_logger(__name__)
_UNSET = object()


def settle(cfg: DictConfig) -> dict[str, Any]:
    """Check `cfg`, write into it the values the run derives, save and show it; returns what
    changed ({dotted key: value}, empty when the config already said everything)."""
    check_values(cfg)
    settled = derived_values(cfg)
    resume = resume_target(cfg)
    checkpoint = resume.checkpoint if resume is not None else evaluated_checkpoint(cfg)
    settled |= data_values(cfg, checkpoint)
    if resume is not None:
        # the classes the data has, from a data source built only to name them (no loading)
        data = cfg.data.copy()
        for key, value in settled.items():
            if key.startswith("data."):
                set_in_struct(data, key.removeprefix("data."), value)
        check_checkpoint_fits(resume, cfg, instantiate(data).class_names)
        check_resume(resume.checkpoint["hyper_parameters"].get("lora"), cfg.model.get("lora"))
        settled["ckpt_path"] = str(resume.ckpt)
        if resume.run_dir is not None:
            settled["paths.output_dir"] = str(resume.run_dir)
    changed = {
        key: value
        for key, value in settled.items()
        if OmegaConf.select(cfg, key, default=_UNSET) != value
    }
    for key, value in changed.items():
        set_in_struct(cfg, key, value)
    record_config(cfg)
    return changed


def evaluated_checkpoint(cfg: DictConfig) -> dict[str, Any] | None:
    """The checkpoint an evaluation scores (its tensors mapped, not read), or None."""
    if cfg.get("train") or not cfg.get("ckpt_path") or "data" not in cfg:
        return None
    if names_a_pretrained_net(cfg.ckpt_path):  # a timm model trained elsewhere: what it says
        return {"hyper_parameters": pretrained_hyperparameters(cfg.ckpt_path)}
    if names_an_export(cfg.ckpt_path):  # an exported file: what its model card says
        return {"hyper_parameters": export_hyperparameters(cfg.ckpt_path)}
    return read_checkpoint(Path(cfg.ckpt_path), mmap=True)


def data_values(cfg: DictConfig, checkpoint: dict[str, Any] | None) -> dict[str, Any]:
    """What the data gives the model: multi-hot labels where its task has several per image, and
    the input contract of a checkpoint (evaluated or resumed) or else of pretrained weights; the
    train crop follows pretrained weights' crop unless the data config sets it (a resumed run
    trains at the crop it was started with: the contract is evaluation's)."""
    if "data" not in cfg:
        return {}
    contract, task = None, (cfg.get("model") or {}).get("task", "multiclass")
    if checkpoint is not None:
        hparams = checkpoint["hyper_parameters"]
        task = hparams.get("task", "multiclass")
        saved = hparams.get("preprocessing") or {}
        if {"resize", "crop", "mean", "std"} <= saved.keys():
            contract = InputContract.from_dict(saved)
    elif cfg.get("model") is not None:
        contract = weights_contract(OmegaConf.to_container(cfg.model.net, resolve=True))
    values: dict[str, Any] = {"data.multilabel": True} if task == "multilabel" else {}
    if contract is None:
        return values
    values |= {
        "data.eval_resize": contract.resize,
        "data.eval_crop": contract.crop,
        "data.mean": list(contract.mean),
        "data.std": list(contract.std),
    }
    if checkpoint is None and cfg.data.get("train_crop") is None:  # a resume keeps its own
        values["data.train_crop"] = contract.crop
    source = "the checkpoint" if checkpoint is not None else "the pretrained weights"
    log.info(f"Data preprocessing follows {source}: {contract.as_dict()}")
    return values


def record_config(cfg: DictConfig) -> None:
    """The settled config as the run's record: Hydra's `.hydra/config.yaml` written again (where
    this process writes one: rank 0 of a command), and the config tree printed and saved beside
    it when `extras.print_config` is on."""
    folder = Path(cfg.paths.output_dir)
    subdir = None
    if HydraConfig.initialized():
        folder = Path(HydraConfig.get().runtime.output_dir)
        subdir = HydraConfig.get().output_subdir
    if subdir is not None and rank_zero_only.rank == 0:
        (folder / subdir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, folder / subdir / "config.yaml")
    if (cfg.get("extras") or {}).get("print_config"):
        print_config_tree(cfg, save_to=folder / "config_tree.log")

"""Every option of every config group composes and builds: a new yaml is tested automatically."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from lightning.pytorch import Trainer

from imgcls import CONFIG_DIR
from imgcls.models.classifier import ImageClassifier
from imgcls.train import build_components
from tests.data_factory import (
    cache_torchvision_weights,
    write_cifar,
    write_class_tree,
    write_hf_dataset,
    write_imagenet,
    write_label_csv,
    write_shard_set,
)

GROUPS = [
    "data",
    "model",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "paths",
    "extras",
    "hydra",
    "experiment",
    "debug",
    "hparams_search",
]
# Presets that need hardware this machine lacks are built on the CPU instead.
NEEDS_GPU = {("trainer", "gpu"), ("trainer", "ddp")}
# Data sources that read files, by target: a tiny stand-in is written for them, and the key
# that points at it.
DATA_ON_DISK = {
    "imgcls.data.sources.cifar.CIFAR10DataModule": ("root", lambda root: write_cifar(root, 10)),
    "imgcls.data.sources.cifar.CIFAR100DataModule": ("root", lambda root: write_cifar(root, 100)),
    "imgcls.data.sources.folder.FolderDataModule": (
        "root",
        lambda root: write_class_tree(root, ["a", "b"], 10),
    ),
    "imgcls.data.sources.imagenet.ImageNetDataModule": ("root", write_imagenet),
    "imgcls.data.sources.csv_source.CsvDataModule": ("csv", write_label_csv),
    "imgcls.data.sources.shards.ShardsDataModule": ("root", write_shard_set),
    "imgcls.data.sources.hf.HFDataModule": ("path", write_hf_dataset),
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


ALL_OPTIONS = [(group, option) for group in GROUPS for option in options(group)]


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), f"configs/{group}/ has no options"


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_option_composes_and_builds(
    make_cfg, tmp_path: Path, fake_cifar_integrity, group: str, option: str
) -> None:
    overrides = [f"{group}={option}"]
    if (group, option) == ("experiment", "finetune_folder"):
        cache_torchvision_weights("resnet50")
    if (group, option) in {
        ("experiment", "finetune_vit_folder"),
        ("experiment", "dinov2_linear_probe"),
        ("experiment", "dinov2_lora_folder"),
    }:
        overrides.append("model.net.pretrained=false")  # timm's weights need the Hub
    if (group, option) == ("experiment", "dinov2_linear_probe"):
        overrides.append(f"model.probe.cache_dir={tmp_path / 'cache'}")
    if (group, option) == ("experiment", "linear_probe"):  # its loaders make features: a tiny ViT
        overrides += ["model.net.name=timm/test_vit", "model.net.pretrained=false"]
        overrides += ["+model.net.img_size=224", f"model.probe.cache_dir={tmp_path / 'cache'}"]
    if (group, option) in NEEDS_GPU:
        overrides.append("trainer.accelerator=cpu")
    if (group, option) == ("logger", "wandb"):
        overrides.append("logger.wandb.offline=true")
    cfg = make_cfg(*overrides)
    if cfg.data._target_ in DATA_ON_DISK:  # a source that reads files: a tiny stand-in
        key, write = DATA_ON_DISK[cfg.data._target_]
        cfg.data[key] = str(write(tmp_path / "data"))
    objects = build_components(cfg)
    assert isinstance(objects["model"], ImageClassifier)
    assert isinstance(objects["trainer"], Trainer)
    datamodule, model = objects["datamodule"], objects["model"]
    assert model.hparams.num_classes == datamodule.num_classes
    datamodule.setup()
    images, _ = next(iter(datamodule.val_dataloader()))
    images, _ = datamodule.on_after_batch_transfer((images[:2], None), 0)
    logits = model(images)
    assert logits.shape == (2, datamodule.num_classes)


@pytest.mark.parametrize("option", options("hparams_search"))
def test_search_space_names_real_keys(make_cfg, option: str) -> None:
    """A sweep over a key the config does not have would silently add it: catch the typo here."""
    from omegaconf import OmegaConf

    cfg = make_cfg(f"hparams_search={option}")
    search = OmegaConf.load(CONFIG_DIR / "hparams_search" / f"{option}.yaml")
    for key in search.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, f"{option} searches unknown key {key}"


def test_eval_config_composes(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("ckpt_path=x.ckpt", config_name="eval")
    assert cfg.task_name == "eval"
    assert cfg.paths.output_dir == str((tmp_path / "run").resolve())


def test_typo_in_key_fails_naming_it(make_cfg) -> None:
    with pytest.raises(ConfigCompositionException, match=r"optimizer\.lrr"):
        make_cfg("optimizer.lrr=0.1")


def test_unknown_group_option_lists_choices(make_cfg) -> None:
    with pytest.raises(
        ConfigCompositionException, match=r"(?s)resnett.*Available options.*resnet18"
    ):
        make_cfg("model=resnett")


def test_slurm_launcher_composes(tmp_path: Path) -> None:
    """`-m hydra/launcher=submitit_slurm` sends each job to SLURM, one task per device."""
    from hydra import compose, initialize_config_dir

    overrides = [
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.tasks_per_node=4",
        "hydra.launcher.gpus_per_node=4",
        "trainer=ddp",
        "trainer.devices=4",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    assert "SlurmLauncher" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices == 4

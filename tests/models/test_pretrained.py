"""Fine-tuning: pretrained weights from each source, head replacement, head lr (the frozen
backbone: tests/callbacks/test_frozen_backbone.py); the input contract and class names of a timm
model in a folder."""

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from lightning.pytorch.callbacks import Callback

from imgcls.input_contract import InputContract
from imgcls.models.pretrained import (
    find_head,
    read_state_dict,
    timm_label_names,
    timm_pretrained_cfg,
    weights_contract,
)
from imgcls.models.zoo import build_net
from imgcls.run.settle import data_values
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.data_factory import cache_torchvision_weights, write_class_tree

SMALL_IMAGES = ["data.train_crop=32", "data.eval_resize=36", "data.eval_crop=32"]


def folder_overrides(tmp_path: Path, classes: int = 3) -> list[str]:
    names = ["cat", "dog", "fox", "owl"][:classes]
    root = write_class_tree(tmp_path / "photos", names, 8)
    return ["data=folder", f"data.root={root}", "data.batch_size=8", "data.num_workers=0"]


class Snapshots(Callback):
    """The net's state_dict at the end of every training epoch, copied to the CPU (where the
    weights the test compares them with were loaded), whatever device trained."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.states.append(
            {k: v.detach().to("cpu", copy=True) for k, v in pl_module.net.state_dict().items()}
        )


def test_head_lr_mult_splits_decay_groups_too(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        *folder_overrides(tmp_path),
        *SMALL_IMAGES,
        "model=cifar_quick",
        "optimizer.imgcls.lr_mult.head=5",
        "optimizer.imgcls.no_decay_norm_and_bias=true",
        "optimizer.lr=0.02",
        "scheduler=none",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=1",
        "test=false",
    )
    _, objects = train(cfg)
    groups = {g["name"]: g for g in objects["trainer"].optimizers[0].param_groups}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert groups["head"]["lr"] == pytest.approx(0.1)
    assert groups["head_no_decay"]["weight_decay"] == 0.0
    assert groups["backbone"]["lr"] == pytest.approx(0.02)


def test_torchvision_weights_by_name_come_from_the_hub_cache() -> None:
    cached = torch.load(cache_torchvision_weights("resnet18"), weights_only=True)
    net = build_net("resnet18", num_classes=5, weights="DEFAULT")
    state = net.state_dict()
    assert torch.equal(state["layer4.1.conv2.weight"], cached["layer4.1.conv2.weight"])
    assert state["fc.weight"].shape == (5, 512)


def test_offline_without_cached_weights_says_what_to_do(monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    with pytest.raises(UserError, match=r"resnet34-b627a593\.pth.*weights_path") as err:
        build_net("resnet34", num_classes=2, weights="IMAGENET1K_V1")
    assert "\n" not in str(err.value)


def test_unknown_weights_name_lists_the_real_ones() -> None:
    with pytest.raises(UserError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        build_net("resnet50", num_classes=2, weights="IMAGENET1K_V3")


def test_weights_of_another_architecture_are_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(UserError, match="do not fit this net") as err:
        build_net("resnet34", num_classes=2, weights_path=str(path))
    assert "\n" not in str(err.value)


def test_weights_path_takes_our_checkpoint_and_safetensors(make_cfg, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    _, objects = train(
        make_cfg("model=cifar_quick", "trainer.max_epochs=1", "+trainer.limit_train_batches=2")
    )
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    trained = objects["model"].net.state_dict()
    # our checkpoint: 10 digit classes -> a 3-class head, the rest loaded
    net = build_net("cifar_quick", num_classes=3, weights_path=str(ckpt))
    body = [k for k in trained if not k.startswith("13.")]  # 13: the head
    assert all(torch.equal(net.state_dict()[k], trained[k]) for k in body)
    # the same tensors as safetensors (no pickle at all)
    save_file({k: v.contiguous() for k, v in trained.items()}, tmp_path / "w.safetensors")
    assert read_state_dict(tmp_path / "w.safetensors").keys() == trained.keys()


def test_timm_models_by_name(tmp_path: Path) -> None:
    net = build_net("timm/resnet10t", num_classes=4)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 4)
    assert find_head(net, 4) == "fc"  # timm's get_classifier says so
    assert find_head(build_net("timm/convnext_atto", num_classes=4), 4) == "head.fc"
    path = tmp_path / "timm.pth"
    torch.save(net.state_dict(), path)
    again = build_net("timm/resnet10t", num_classes=7, weights_path=str(path))
    assert torch.equal(again.state_dict()["conv1.0.weight"], net.state_dict()["conv1.0.weight"])
    with pytest.raises(UserError, match="timm/resnet10t"):
        build_net("timm/resnet10", num_classes=2)


def test_the_input_contract_follows_the_weights(make_cfg, tmp_path: Path) -> None:
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    torchvision_v2 = weights_contract({"name": "resnet50", "weights": "IMAGENET1K_V2"})
    assert torchvision_v2 == InputContract(232, 224, *imagenet)
    assert weights_contract({"name": "resnet50", "weights": None}) is None
    timm_net = {"name": "timm/convnext_tiny.fb_in1k", "pretrained": True}
    assert weights_contract(timm_net) == InputContract(256, 224, *imagenet)
    cfg = make_cfg(*folder_overrides(tmp_path), "model=resnet50", "model.net.weights=IMAGENET1K_V2")
    assert data_values(cfg, None)["data.train_crop"] == 224


def test_a_timm_model_in_a_folder_brings_its_own_contract_and_class_names(
    tmp_path: Path,
) -> None:
    """A model timm's save_for_hf wrote (as the Hub holds them): its pretrained config's mean,
    std, size and crop_pct are the input contract, its label_names the class names."""
    import timm
    from timm.models import save_for_hf

    net = timm.create_model("test_vit", num_classes=2, img_size=32)
    stats = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.2, 0.25)}
    data = {"input_size": (3, 32, 32), "crop_pct": 0.8, **stats}
    names = {"label_names": ["cat", "dog"]}
    save_for_hf(net, str(tmp_path / "m"), names, safe_serialization=True, data_config=data)
    name = f"timm/local-dir:{tmp_path / 'm'}"
    assert weights_contract({"name": name, "pretrained": True}) == InputContract(40, 32, **stats)
    assert weights_contract({"name": name, "pretrained": False}) is None  # from scratch
    config = timm_pretrained_cfg(name.removeprefix("timm/"))
    assert (config["architecture"], timm_label_names(config)) == ("test_vit", ["cat", "dog"])
    assert timm_label_names({"num_classes": 2, "label_names": {"1": "b", "0": "a"}}) == ["a", "b"]
    assert timm_label_names({"num_classes": 3, "label_names": ["a", "b"]}) is None

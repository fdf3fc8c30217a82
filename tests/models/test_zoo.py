"""models/zoo.py: a net by name, ours, torchvision's or timm's; the one line for a name none of
them has; the CIFAR stem; the head sized and initialized; stochastic depth reaching the net or
refused; a net as its pretrained weights come (from the offline cache, never downloaded); timm
models from a folder or the Hub (a tmp folder and a tmp Hugging Face cache, offline); gradient
checkpointing."""

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from imgcls.models.nets.lenet import LeNet
from imgcls.models.zoo import (
    available_nets,
    build_net,
    pretrained_classes,
    pretrained_config,
    source_of,
    torchvision_models,
)
from imgcls.utils.errors import UserError
from tests.data_factory import cache_torchvision_weights


def test_every_torchvision_classifier_is_available() -> None:
    names = torchvision_models()
    assert {"resnet50", "vgg16", "resnext101_32x8d", "vit_b_16", "convnext_tiny"} <= set(names)
    assert set(names) <= set(available_nets())


def test_torchvision_head_is_sized_for_the_classes() -> None:
    net = build_net("resnext101_32x8d", num_classes=2)
    assert net.fc.out_features == 2


def test_unknown_net_name_suggests_the_close_one() -> None:
    with pytest.raises(
        UserError, match=r"Unknown model\.net\.name='resnet5O'.*Did you mean resnet50"
    ):
        build_net("resnet5O", num_classes=10)


def test_drop_path_rate_reaches_timm_and_torchvision_nets_and_is_refused_elsewhere() -> None:
    vit = build_net("timm/vit_tiny_patch16_224", 10, drop_path_rate=0.1, img_size=32, depth=2)
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    convnext = build_net("convnext_tiny", 10, drop_path_rate=0.3)
    assert convnext.features[-1][-1].stochastic_depth.p == pytest.approx(0.3)
    with pytest.raises(UserError, match="swin_t sets its stochastic depth itself"):
        build_net("swin_t", 10, drop_path_rate=0.1)
    for name in ("resnet18", "resnet_cifar"):
        with pytest.raises(UserError, match=f"{name} has no stochastic depth"):
            build_net(name, 10, drop_path_rate=0.1)
    with pytest.raises(UserError, match="timm/vgg11 has no stochastic depth"):
        build_net("timm/vgg11", 10, drop_path_rate=0.1)
    with pytest.raises(UserError, match=r"in \[0, 1\)"):
        build_net("convnext_tiny", 10, drop_path_rate=1.0)


def test_each_name_comes_from_its_source() -> None:
    assert isinstance(build_net("lenet", 4), LeNet)
    assert isinstance(build_net("resnet18", 4), torchvision.models.ResNet)
    timm_net = build_net("timm/resnet18", 4)
    assert type(timm_net).__module__.startswith("timm.")
    assert timm_net(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    assert [source_of(n) for n in ("lenet", "resnet18", "timm/anything")] == [
        "ours",
        "torchvision",
        "timm",
    ]


def test_an_unknown_name_is_one_line_naming_the_key_that_said_it() -> None:
    with pytest.raises(UserError) as err:
        source_of("resnet5O", key="model.distill.teacher")
    message = str(err.value)
    assert message.startswith("Unknown model.distill.teacher='resnet5O'. Did you mean resnet50")
    assert "\n" not in message
    assert "cifar_quick" in message  # ours are options too
    with pytest.raises(
        UserError, match=r"timm has no model 'resnet5O'\. Did you mean timm/resnet50"
    ):
        build_net("timm/resnet5O", 4)


def layer4_side(net: nn.Module, size: int) -> int:
    seen = []
    net.layer4.register_forward_hook(lambda module, args, out: seen.append(out.shape[-1]))
    net(torch.zeros(2, 3, size, size))
    return seen[0]


def test_the_cifar_stem_keeps_32_px_images_at_4x4_in_the_last_stage() -> None:
    plain, stem = build_net("resnet18", 10), build_net("resnet18", 10, cifar_stem=True)
    assert (stem.conv1.kernel_size, stem.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(stem.maxpool, nn.Identity)
    assert layer4_side(stem, 32) == 4
    assert layer4_side(plain, 32) == 1
    with pytest.raises(UserError, match="applies to torchvision ResNets only"):
        build_net("vgg11", 10, cifar_stem=True)


@pytest.mark.parametrize("name", ["timm/resnet18", "resnet_cifar"])
def test_the_cifar_stem_is_refused_for_a_net_it_does_not_change(name: str) -> None:
    with pytest.raises(UserError, match="applies to torchvision ResNets only"):
        build_net(name, 10, cifar_stem=True)


def test_the_head_is_initialized_as_asked() -> None:
    net = build_net("resnet18", 3, head_init="zeros")
    assert not net.fc.weight.any()
    assert not net.fc.bias.any()
    assert not net(torch.randn(2, 3, 32, 32)).any()  # every class equal at the start
    ours = build_net("lenet", 3, head_init="xavier")
    head = [m for m in ours.modules() if isinstance(m, nn.Linear)][-1]
    assert head.out_features == 3
    assert not head.bias.any()  # xavier: the weights drawn, the bias zero
    bound = (6 / (head.in_features + head.out_features)) ** 0.5
    assert 0.5 * bound < float(head.weight.detach().abs().max()) <= bound
    with pytest.raises(UserError, match="head_init must be one of default, xavier, zeros"):
        build_net("lenet", 3, head_init="bogus")


def test_weight_options_that_cannot_apply_are_one_line_each() -> None:
    with pytest.raises(UserError, match=r"model\.net\.pretrained is for timm/ models"):
        build_net("resnet18", 3, pretrained=True)
    with pytest.raises(UserError, match=r"names torchvision weights; lenet has none"):
        build_net("lenet", 3, weights="DEFAULT")
    with pytest.raises(UserError, match=r"weights or model\.net\.weights_path, not both"):
        build_net("resnet18", 3, weights="DEFAULT", weights_path="elsewhere.pt")


def test_a_pretrained_net_comes_with_its_own_head_from_the_cache() -> None:
    cached = torch.load(cache_torchvision_weights("resnet18"), weights_only=True)
    for spec in ("resnet18", "resnet18:IMAGENET1K_V1"):
        net_config = pretrained_config(spec, "model.distill.teacher")
        classes = pretrained_classes(net_config)  # known before any download
        net = build_net(num_classes=classes, **net_config)
        assert classes == 1000  # ImageNet's, as the weights were trained
        state = net.state_dict()
        assert torch.equal(state["fc.weight"], cached["fc.weight"])  # the head too
        assert torch.equal(state["layer1.0.conv1.weight"], cached["layer1.0.conv1.weight"])
    with pytest.raises(UserError, match=r"model\.distill\.teacher=lenet: our nets have no"):
        pretrained_config("lenet", "model.distill.teacher")
    with pytest.raises(UserError, match=r"Unknown model\.distill\.teacher='resnet5O'"):
        pretrained_config("resnet5O", "model.distill.teacher")


def save_timm(folder: Path, classes: int = 3, **data_config: Any) -> nn.Module:
    """A tiny timm ViT (32 px) with random weights, written as timm's save_for_hf writes a model
    for the Hub: the stand-in for a model shared on the Hub."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    net = timm.create_model("test_vit", num_classes=classes, img_size=32).eval()
    names = {"label_names": [f"class{i}" for i in range(classes)]}
    save_for_hf(net, str(folder), names, safe_serialization=True, data_config=data_config or None)
    return net


def hub_cache(root: Path, repo: str, folder: Path) -> Path:
    """The Hugging Face cache as a download of `repo` leaves it (refs/main -> a snapshot)."""
    commit = "0" * 40
    cached = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, cached / "snapshots" / commit)
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text(commit)
    return root


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of this test's own, offline: nothing downloads."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_timm_model_from_a_folder_or_the_hub_comes_with_its_own_weights(
    tmp_path: Path, offline_hub: Path
) -> None:
    saved = save_timm(tmp_path / "vit")
    images = torch.randn(2, 3, 32, 32)
    hub_cache(offline_hub, "someone/tiny-vit", tmp_path / "vit")
    with torch.no_grad():
        expected = saved(images)
        for name in (f"timm/local-dir:{tmp_path / 'vit'}", "timm/hf-hub:someone/tiny-vit"):
            net = build_net(name, num_classes=3, pretrained=True).eval()
            assert torch.equal(net(images), expected), name
            net_config = pretrained_config(name, "model.distill.teacher")
            assert pretrained_classes(net_config) == 3  # from its config.json
    # another class count: the body loaded, a fresh head sized for it
    other = build_net(f"timm/local-dir:{tmp_path / 'vit'}", num_classes=5, pretrained=True)
    assert other.head.out_features == 5
    assert torch.equal(other.blocks[0].attn.qkv.weight, saved.blocks[0].attn.qkv.weight)


def test_a_wrong_hub_or_folder_name_is_one_line(tmp_path: Path, offline_hub: Path) -> None:
    (tmp_path / "empty").mkdir()
    wrong = {
        f"timm/local-dir:{tmp_path / 'nope'}": "is not a folder",
        f"timm/local-dir:{tmp_path / 'empty'}": "has no config.json",
        "timm/hub:someone/tiny-vit": "Unknown model source 'hub'",
        "timm/hf-hub:": "no model id",
        "timm/someone/tiny-vit": "Use 'hf-hub:someone/tiny-vit'",
        "timm/hf-hub:someone/missing": "could not be fetched from the Hugging Face Hub",
    }
    for name, says in wrong.items():
        for pretrained in (True, False):
            with pytest.raises(UserError) as err:
                build_net(name, num_classes=3, pretrained=pretrained)
            assert says in str(err.value), name
            assert "\n" not in str(err.value), name
    save_timm(tmp_path / "no_weights")
    (tmp_path / "no_weights" / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"Could not get timm/local-dir:.*pretrained weights"):
        build_net(f"timm/local-dir:{tmp_path / 'no_weights'}", num_classes=3, pretrained=True)


def test_gradient_checkpointing_recomputes_timm_blocks_and_is_refused_elsewhere() -> None:
    """The same gradients, the blocks' forward run again in the backward pass (their
    activations were not kept); our nets and torchvision's have no such switch."""
    net = build_net("timm/test_vit", 3, img_size=32, grad_checkpointing=True).train()
    calls: list[int] = []
    net.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    images = torch.randn(2, 3, 32, 32)
    net(images).square().sum().backward()
    assert len(calls) == 2  # the forward pass, and again in the backward pass
    recomputed = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net.set_grad_checkpointing(False)
    net(images).square().sum().backward()
    assert len(calls) == 3
    for (name, p), grad in zip(net.named_parameters(), recomputed, strict=True):
        assert torch.allclose(p.grad, grad, atol=1e-6), name
    for name in ("resnet18", "lenet"):
        with pytest.raises(UserError, match=f"grad_checkpointing=true: {name} has no gradient"):
            build_net(name, 3, grad_checkpointing=True)

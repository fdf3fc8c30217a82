"""models/zoo.py: a net by name, ours, torchvision's or timm's; the one line for a name none of
them has; the CIFAR stem; the head sized and initialized; stochastic depth reaching the net or
refused; a net as its pretrained weights come (from the offline cache, never downloaded)."""

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

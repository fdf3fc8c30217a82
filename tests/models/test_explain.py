"""Grad-CAM maps: the layer found for each kind of net, maps that point where the class's
evidence is, one forward and backward a batch with no wait per image, the net given back as it
was, and one line for a net it cannot explain."""

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from imgcls.models.explain import Explainer, NotExplainableError, cam_target
from imgcls.models.nets import NETS
from tests.device_waits import DeviceWaitTrace


def found(net: nn.Module, size: int, head: nn.Module | None = None) -> tuple[str, tuple]:
    """The layer found and the shape of its map (as the map is taken: a ViT's tokens laid out)."""
    target = cam_target(net, torch.zeros(3, size, size), head)
    seen = []
    handle = target.layer.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, size, size))
    handle.remove()
    return target.name, tuple(target.reshape(seen[0]).shape)


def test_the_layer_of_each_kind_of_net() -> None:
    torch.manual_seed(0)
    ours = {name: NETS[name](num_classes=10) for name in NETS}
    # ours: the last feature map before the pooling (LeNet's and CIFAR10-quick's 5 x 5 and
    # 4 x 4 pools are no-ops at 32 px, so they end on the same map as the last conv stage)
    assert found(ours["lenet"], 32) == ("6", (1, 16, 5, 5))
    assert found(ours["cifar_quick"], 32) == ("9", (1, 64, 4, 4))
    assert found(ours["fast_cifar"], 32) == ("4", (1, 256, 3, 3))  # the third ConvGroup
    assert found(ours["resnet_cifar"], 32)[1] == (1, 64, 8, 8)  # the last block
    assert isinstance(
        ours["resnet_cifar"].get_submodule(found(ours["resnet_cifar"], 32)[0]),
        type(ours["resnet_cifar"][-4]),
    )
    # torchvision: the outermost module of the last stage (ResNet's layer4, not its last ReLU,
    # which every block calls twice)
    resnet = torchvision.models.resnet18(num_classes=3)
    assert found(resnet, 64, resnet.fc) == ("layer4", (1, 512, 2, 2))
    # SqueezeNet's head is a 1 x 1 conv on a spatial map: the map is taken before it
    squeeze = torchvision.models.squeezenet1_1(num_classes=3)
    name, shape = found(squeeze, 64, squeeze.classifier[1])
    assert name in ("features", "classifier.0")
    assert shape[1] == 512
    # timm: a CNN's last map before its pooled head; a ViT's last block's norm, on its grid
    convnext = timm.create_model("test_convnext", num_classes=3)
    assert found(convnext, 64, convnext.get_classifier())[1][2:] == (2, 2)
    efficientnet = timm.create_model("test_efficientnet", num_classes=3)
    assert found(efficientnet, 64, efficientnet.get_classifier()) == ("bn2", (1, 256, 2, 2))
    vit = timm.create_model("test_vit", num_classes=3)  # 16 px patches, one class token
    assert found(vit, 64, vit.get_classifier()) == ("blocks.-1.norm1", (1, 64, 4, 4))
    tv_vit = VisionTransformer(32, 8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    assert found(tv_vit, 32) == ("encoder.layers.-1.ln_1", (1, 16, 4, 4))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_a_net_it_cannot_explain_is_one_line() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(NotExplainableError, match="no NCHW feature map") as refused:
        Explainer(mlp, torch.zeros(3, 8, 8))
    assert "\n" not in str(refused.value)
    traced = torch.jit.trace(NETS["lenet"](num_classes=2).eval(), torch.zeros(1, 3, 32, 32))
    with pytest.raises(NotExplainableError, match="TorchScript"):
        Explainer(traced, torch.zeros(3, 32, 32))


class Counted(nn.Module):
    """Counts the forwards and the backwards that pass it."""

    def __init__(self) -> None:
        super().__init__()
        self.forwards = self.backwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        if x.requires_grad:
            x.register_hook(lambda grad: setattr(self, "backwards", self.backwards + 1))
        return x * 1


def colour_net() -> nn.Sequential:
    """Class 0 is the red in the image, class 1 the green: a 1 x 1 conv passing the colours on,
    averaged, and a head that reads red for class 0 and green for class 1."""
    conv = nn.Conv2d(3, 3, 1)
    head = nn.Linear(3, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3)[:, :, None, None])
        conv.bias.zero_()
        head.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        head.bias.zero_()
    return nn.Sequential(Counted(), conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def test_maps_point_where_each_class_is_one_pass_a_batch() -> None:
    net = colour_net().train()  # as a net is left after training: the mode must come back
    image = torch.zeros(3, 16, 16)
    image[0, :8, :8] = 1.0  # red: top left
    image[1, 8:, 8:] = 1.0  # green: bottom right
    explainer = Explainer(net, image, head=net[-1])
    assert explainer.target.name == "2"  # the ReLU's map, the last before the pooling
    counted = net[0]
    counted.forwards = 0
    with torch.inference_mode():  # as Lightning runs test and predict
        images = torch.stack([image, image])
        maps = explainer(images, torch.tensor([0, 1]))
    assert (counted.forwards, counted.backwards) == (1, 1)  # both images, both classes at once
    assert maps.shape == (2, 16, 16)
    assert 0 <= maps.min() <= maps.max() <= 1
    red, green = maps
    assert red[:8, :8].mean() > 0.9
    assert max(red[8:, :].max(), red[:, 8:].max()) < 0.1
    assert green[8:, 8:].mean() > 0.9
    assert max(green[:8, :].max(), green[:, :8].max()) < 0.1
    # the net as it was: train mode, trainable, no gradients left on it
    assert all(m.training for m in net.modules())
    assert all(p.requires_grad and p.grad is None for p in net.parameters())


def test_no_wait_per_image() -> None:
    net = colour_net()
    explainer = Explainer(net, torch.zeros(3, 16, 16), head=net[-1])
    images = torch.rand(6, 3, 16, 16)
    waits = []
    for n in (2, 6):  # the host waits as often for 6 images as for 2: per batch, not per image
        with DeviceWaitTrace() as trace:
            explainer(images[:n], torch.tensor([0, 1] * (n // 2)))
        waits.append(len(trace.waits))
    assert waits[0] == waits[1] > 0


def test_a_vit_and_a_cnn_map_each_class_apart() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    vit = timm.create_model("test_vit", num_classes=3)
    explainer = Explainer(vit, images[0], vit.get_classifier())
    maps = explainer(torch.cat([images, images]), [0, 0, 2, 2])
    assert maps.shape == (4, 64, 64)
    assert (maps.flatten(1).sum(1) > 0).all()
    assert not torch.allclose(maps[:2], maps[2:], atol=1e-3)
    net = NETS["resnet_cifar"](num_classes=3).eval()
    small = images[:1, :, :32, :32]
    by_class = Explainer(net, small)(small.repeat(3, 1, 1, 1), [0, 1, 2])
    assert by_class.flatten(1).sum(1).gt(0).sum() >= 2
    assert not torch.allclose(by_class[0], by_class[1], atol=1e-3)


@pytest.mark.cuda
def test_maps_on_a_gpu() -> None:
    net = colour_net().cuda()
    image = torch.zeros(3, 16, 16, device="cuda")
    image[0, :8, :8] = 1.0
    explainer = Explainer(net, image, head=net[-1])
    with torch.inference_mode():
        maps = explainer(image[None].repeat(4, 1, 1, 1), torch.zeros(4, dtype=int, device="cuda"))
    assert maps.device.type == "cpu"
    assert maps.shape == (4, 16, 16)
    assert (maps[:, :8, :8].mean((1, 2)) > 0.9).all()


def test_without_pytorch_grad_cam_it_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine set up by hand (the GPU machine's make gpu-check) may lack the library: the
    report then says so in one line and goes on; predict refuses explain=true in one line."""
    import builtins

    real_import = builtins.__import__

    def without(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("pytorch_grad_cam"):
            raise ImportError("No module named 'pytorch_grad_cam'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(NotExplainableError, match="pip install grad-cam"):
        Explainer(NETS["lenet"](num_classes=3), torch.zeros(3, 32, 32))

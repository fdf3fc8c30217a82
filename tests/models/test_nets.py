"""models/nets/: our own nets and the ones we train most, built by name: shapes, deterministic
backward kernels, the fast_cifar whitening stem and identity init (the zoo's lookup by name:
tests/models/test_zoo.py)."""

import pytest
import torch
from torch import nn

from imgcls.models.nets.fast_cifar import FastCifar, whitening_filters
from imgcls.models.nets.resnet_cifar import BasicBlock
from imgcls.models.zoo import build_net


@pytest.mark.parametrize("name", ["cifar_quick", "lenet", "resnet_cifar", "resnet18", "vgg11"])
@pytest.mark.parametrize("size", [32, 64])
def test_nets_give_one_logit_per_class(name: str, size: int) -> None:
    net = build_net(name, num_classes=7)
    assert net(torch.zeros(2, 3, size, size)).shape == (2, 7)


# Backward ops that torch refuses on CUDA under trainer.deterministic=true (their kernels add
# gradients with atomics; see torch.use_deterministic_algorithms).
CUDA_NONDETERMINISTIC_BACKWARD = {
    "AdaptiveAvgPool2DBackward0",
    "AdaptiveAvgPool3DBackward0",
    "AdaptiveMaxPool2DBackward0",
    "AvgPool3DBackward0",
    "FractionalMaxPool2DBackward0",
    "FractionalMaxPool3DBackward0",
    "UpsampleLinear1DBackward0",
    "UpsampleBilinear2DBackward0",
    "UpsampleBicubic2DBackward0",
    "UpsampleTrilinear3DBackward0",
    "ReflectionPad1DBackward0",
    "ReflectionPad2DBackward0",
    "ReflectionPad3DBackward0",
    "GridSampler2DBackward0",
    "NllLoss2DBackward0",
    "EmbeddingBagBackward0",
}


def backward_ops(output: torch.Tensor) -> set[str]:
    seen, todo, names = set(), [output.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo += [next_node for next_node, _ in node.next_functions]
    return names


NETS_AT_SIZES = [("cifar_quick", 32), ("cifar_quick", 64), ("lenet", 32), ("fast_cifar", 32)]


NETS_AT_SIZES += [("resnet_cifar", 32), ("resnet18", 64), ("resnet50", 64)]


@pytest.mark.parametrize(("name", "size"), NETS_AT_SIZES)
def test_our_nets_train_deterministically_on_cuda(name: str, size: int) -> None:
    """Their backward passes avoid every op CUDA's deterministic mode refuses (checked on the
    CPU by walking the autograd graph of a training step)."""
    net = build_net(name, num_classes=10).to(memory_format=torch.channels_last)
    loss = nn.functional.cross_entropy(net(torch.randn(2, 3, size, size)), torch.tensor([0, 1]))
    ops = backward_ops(loss)
    assert "ConvolutionBackward0" in ops or "MkldnnConvolutionBackward0" in ops  # walked it all
    assert not ops & CUDA_NONDETERMINISTIC_BACKWARD


def test_resnet_cifar_depth_and_residuals() -> None:
    net = build_net("resnet_cifar", num_classes=10, depth=32)
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 15  # (32 - 2) / 2 residual blocks
    with pytest.raises(ValueError, match="6n\\+2"):
        build_net("resnet_cifar", num_classes=10, depth=18)
    # Last BN zero-initialized: a fresh block is exactly relu(shortcut(x)).
    block = blocks[0].eval()
    x = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_fast_cifar_whitening_stem_decorrelates_patches() -> None:
    torch.manual_seed(0)
    net = FastCifar()
    assert not net[0].weight.requires_grad  # a fixed filter bank: only its bias learns
    # correlated channels of unequal scale, as in real photos
    images = torch.randn(64, 3, 32, 32) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    images[:, 1] += images[:, 0]
    net.init_from_data(images)
    responses = nn.functional.conv2d(images, net[0].weight)  # no bias
    half = responses[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    torch.testing.assert_close(half.T @ half / len(half), torch.eye(12), atol=2e-3, rtol=0)
    torch.testing.assert_close(responses[:, 12:], -responses[:, :12])


@pytest.mark.parametrize(
    "sample",
    ["one image", "grey images (rank 4 of 12)", "a constant image"],
)
def test_fast_cifar_whitening_is_finite_for_any_sample(sample: str) -> None:
    torch.manual_seed(0)
    images = {
        "one image": torch.randn(1, 3, 32, 32),
        "grey images (rank 4 of 12)": torch.randn(8, 1, 32, 32).expand(8, 3, 32, 32),
        "a constant image": torch.full((2, 3, 32, 32), 0.3),
    }[sample]
    net = FastCifar()
    net.init_from_data(images)
    assert torch.isfinite(net[0].weight).all()
    assert torch.isfinite(net(images)).all()


def test_whitening_tolerates_eigenvalues_rounded_below_zero() -> None:
    """A covariance computed in low precision (TF32 on a GPU) can come out slightly indefinite."""
    basis, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    eigenvalues = torch.tensor([2.0, 1.0, 0.5, 0.1] + [-1e-3] * 8, dtype=torch.float64)
    covariance = basis @ torch.diag(eigenvalues) @ basis.T
    filters = whitening_filters(covariance.float(), eps=5e-4)
    assert torch.isfinite(filters).all()
    # the real directions are still whitened: largest first, scaled by 1/sqrt(eigenvalue + eps)
    top = basis[:, 0] / (2.0 + 5e-4) ** 0.5
    torch.testing.assert_close(filters[0].abs(), top.abs())


def test_fast_cifar_convs_start_as_identities() -> None:
    group = FastCifar()[2]
    x = torch.randn(2, 24, 8, 8)
    torch.testing.assert_close(group[0](x)[:, :24], x)  # 24 -> 64: first 24 channels pass
    y = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(group[4](y), y)

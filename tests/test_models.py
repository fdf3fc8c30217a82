"""Nets by name, the classifier's metrics, and optimizer / scheduler construction."""

import pytest
import torch
from torch import nn

from imgcls.models.classifier import ImageClassifier, accuracy_metrics
from imgcls.models.nets.fast_cifar import FastCifar, whitening_filters
from imgcls.models.nets.resnet_cifar import BasicBlock
from imgcls.models.optim import build_optimizer, build_scheduler
from imgcls.models.zoo import available_nets, build_net, torchvision_models
from imgcls.utils.errors import UserError

SGD = {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}


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


def test_accuracy_metrics_match_a_hand_computation() -> None:
    # 4 samples, 7 classes; the true class ranks 1st, 2nd, 6th and 4th.
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5, 6],  # label 0: rank 1
            [1.0, 9, 8, 3, 4, 5, 6],  # label 2: rank 2
            [9.0, 8, 7, 6, 5, 1, 0],  # label 5: rank 6
            [1.0, 2, 9, 8, 7, 3, 0],  # label 5: rank 4
        ]
    )
    labels = torch.tensor([0, 2, 5, 5])
    metrics = accuracy_metrics(num_classes=7, prefix="test/")
    metrics.update(logits[:2], labels[:2])
    metrics.update(logits[2:], labels[2:])
    result = metrics.compute()
    assert result["test/acc"].item() == pytest.approx(1 / 4)
    assert result["test/acc_top5"].item() == pytest.approx(3 / 4)


def test_top5_only_with_more_than_five_classes() -> None:
    assert set(accuracy_metrics(5, "val/").keys()) == {"val/acc"}
    assert set(accuracy_metrics(6, "val/").keys()) == {"val/acc", "val/acc_top5"}


def test_classifier_loss_uses_label_smoothing() -> None:
    model = ImageClassifier(
        net={"name": "lenet"}, num_classes=10, optimizer=SGD, label_smoothing=0.1
    )
    logits, labels = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    expected = nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(model.criterion(logits, labels).mean(), expected)


def test_norm_and_bias_can_skip_weight_decay() -> None:
    net = build_net("resnet_cifar", num_classes=10)
    plain = build_optimizer(net, SGD)
    assert len(plain.param_groups) == 1
    assert plain.param_groups[0]["weight_decay"] == 1e-4
    split = build_optimizer(net, {**SGD, "imgcls": {"no_decay_norm_and_bias": True}})
    decay, free = split.param_groups
    assert decay["weight_decay"] == 1e-4
    assert free["weight_decay"] == 0.0
    n_norm = sum(2 for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert len(free["params"]) == n_norm + 1  # BN weight+bias, and the fc bias
    assert all(p.ndim > 1 for p in decay["params"])


def test_norm_layers_can_train_at_a_multiple_of_the_lr() -> None:
    net = build_net("fast_cifar", num_classes=10)
    ours = {"no_decay_norm_and_bias": True, "lr_mult": {"norm": 64}}
    optimizer = build_optimizer(net, {**SGD, "imgcls": ours})
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert sorted(groups) == ["backbone", "backbone_no_decay", "norm_no_decay"]
    assert groups["norm_no_decay"]["lr"] == pytest.approx(6.4)
    assert groups["backbone"]["lr"] == groups["backbone_no_decay"]["lr"] == 0.1
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    norm_params = {id(p) for m in norms for p in m.parameters()}
    assert {id(p) for p in groups["norm_no_decay"]["params"]} == norm_params


def lrs(cfg: dict, total_steps: int, max_epochs: int, steps: int) -> list[float]:
    optimizer = build_optimizer(nn.Linear(2, 2), SGD)
    scheduler = build_scheduler(optimizer, cfg, total_steps=total_steps, max_epochs=max_epochs)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler["scheduler"].step()
    return seen


def test_step_schedule_is_seed_000s() -> None:
    cfg = {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 5, "gamma": 0.2}
    seen = lrs(cfg, total_steps=1000, max_epochs=20, steps=11)
    assert seen[:5] == pytest.approx([0.1] * 5)
    assert seen[5:10] == pytest.approx([0.02] * 5)
    assert seen[10] == pytest.approx(0.004)


def test_warmup_cosine_ramps_then_decays_per_step() -> None:
    cfg = {
        "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
        "T_max": None,
        "imgcls": {"interval": "step", "warmup_epochs": 1, "warmup_start_factor": 0.01},
    }
    # 10 epochs of 10 steps: 10 warmup steps, then 90 of cosine
    seen = lrs(cfg, total_steps=100, max_epochs=10, steps=100)
    assert seen[0] == pytest.approx(0.001)
    assert seen[:10] == sorted(seen[:10])
    assert seen[10] == pytest.approx(0.1)
    assert seen[10:] == sorted(seen[10:], reverse=True)
    assert seen[55] == pytest.approx(0.05, rel=0.02)  # cosine midpoint
    assert seen[-1] < 0.001


def test_onecycle_spans_the_whole_run() -> None:
    cfg = {
        "_target_": "torch.optim.lr_scheduler.OneCycleLR",
        "max_lr": 0.1,
        "total_steps": None,
        "pct_start": 0.25,
        "imgcls": {"interval": "step"},
    }
    seen = lrs(cfg, total_steps=40, max_epochs=4, steps=40)  # stepping past the end would raise
    assert max(seen) == pytest.approx(0.1)
    assert seen.index(max(seen)) == 9
    assert seen[-1] < 1e-3


def test_onecycle_peaks_at_each_groups_lr() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    optimizer = build_optimizer(net, {**SGD, "imgcls": {"lr_mult": {"norm": 4}}})
    cfg = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": None, "total_steps": None}
    scheduler = build_scheduler(optimizer, cfg, total_steps=20, max_epochs=2)["scheduler"]
    peaks = [group["max_lr"] for group in scheduler.optimizer.param_groups]
    assert peaks == pytest.approx([0.1, 0.4])


def test_each_groups_schedule_is_logged_as_it_will_run(caplog: pytest.LogCaptureFixture) -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    optimizer = build_optimizer(net, {**SGD, "imgcls": {"lr_mult": {"norm": 4}}})
    cfg = {
        "_target_": "torch.optim.lr_scheduler.OneCycleLR",
        "max_lr": None,
        "total_steps": None,
        "div_factor": 5.0,
        "imgcls": {"interval": "step", "warmup_epochs": 0.5},
    }
    with caplog.at_level("INFO", logger="imgcls.models.optim"):
        scheduler = build_scheduler(optimizer, cfg, total_steps=20, max_epochs=2)["scheduler"]
    (logged,) = [r.getMessage() for r in caplog.records if "LR schedule" in r.getMessage()]
    curves = [[], []]
    for _ in range(20):  # the real run's lr, step by step (the log's stand-in left it as it was)
        for curve, group in zip(curves, optimizer.param_groups, strict=True):
            curve.append(group["lr"])
        optimizer.step()
        scheduler.step()
    assert "(OneCycleLR after a 5-step linear warm-up, per step, 20 steps)" in logged
    for name, curve in zip(("backbone", "norm"), curves, strict=True):
        peak = curve.index(max(curve))
        points = f"{curve[0]:.4g} -> {curve[peak]:.4g} (step {peak}) -> {curve[-1]:.4g}"
        assert f"  {name}: {points}, weight decay 0.0001" in logged.splitlines()


def test_no_scheduler_config_means_constant_lr() -> None:
    optimizer = build_optimizer(nn.Linear(2, 2), SGD)
    assert build_scheduler(optimizer, {}, total_steps=10, max_epochs=1) is None


def test_the_confusion_matrix_counts_as_torchmetrics_without_bincount() -> None:
    from torchmetrics.classification import (
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    from imgcls.models.confusion import ConfusionMatrix, per_class_scores

    torch.manual_seed(0)
    ours, reference = ConfusionMatrix(7), MulticlassConfusionMatrix(7)
    batches = [(torch.randn(50, 7), torch.randint(0, 6, (50,))) for _ in range(3)]  # class 6 unseen
    for logits, labels in batches:
        ours.update(logits, labels)
        reference.update(logits, labels)
    assert torch.equal(ours.compute(), reference.compute())
    scores = per_class_scores(ours.compute())
    logits, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    for name, metric in (
        ("precision", MulticlassPrecision),
        ("recall", MulticlassRecall),
        ("f1", MulticlassF1Score),
    ):
        expected = metric(7, average=None, zero_division=0)(logits, labels)
        torch.testing.assert_close(scores[name].float(), expected, msg=name)
    assert scores["support"].tolist() == torch.bincount(labels, minlength=7).tolist()


@pytest.mark.parametrize("cfg", [SGD, {"_target_": "torch.optim.AdamW", "lr": 1e-3}])
def test_16_mixed_takes_a_fused_optimizer_that_survives_a_skipped_first_step(cfg: dict) -> None:
    """With a GradScaler the optimizer is torch's fused one (its inf check stays on the
    device); a first step skipped for inf gradients must leave the momentum clean (torch's
    fused SGD would keep uninitialized buffers) and then train exactly as the plain one."""
    weights = []
    for grad_scaler in (False, True):
        torch.manual_seed(0)
        net = nn.Linear(4, 2)
        optimizer = build_optimizer(net, cfg, grad_scaler=grad_scaler)
        assert bool(optimizer.defaults.get("fused")) == grad_scaler
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        for step in range(4):
            optimizer.zero_grad()
            loss = net(torch.randn(8, 4)).square().mean()
            scaler.scale(loss * (float("inf") if step == 0 else 1.0)).backward()
            scaler.step(optimizer)
            scaler.update()
        weights.append(net.weight.detach().clone())
    assert torch.isfinite(weights[1]).all()
    torch.testing.assert_close(weights[1], weights[0])


def test_16_mixed_with_gradient_clipping_keeps_the_plain_optimizer() -> None:
    optimizer = build_optimizer(nn.Linear(2, 2), SGD, grad_scaler=True, clipping=True)
    assert not optimizer.defaults.get("fused")

"""models/optim.py: param groups, fused optimizers under 16-mixed, LR schedules and their log,
a schedule stretched over a resumed run of another length."""

import io

import pytest
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from imgcls.models.optim import build_optimizer, build_scheduler
from imgcls.models.zoo import build_net
from imgcls.utils.errors import UserError
from tests.helpers import SGD


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


COSINE = {
    "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
    "T_max": None,
    "imgcls": {"interval": "step"},
}
# max_lr null: the peak at the optimizer's lr; momentum cycled (cycle_momentum, by default)
ONECYCLE = {
    "_target_": "torch.optim.lr_scheduler.OneCycleLR",
    "max_lr": None,
    "total_steps": None,
    "imgcls": {"interval": "step"},
}
WARMUP_COSINE = {**COSINE, "imgcls": {"interval": "step", "warmup_epochs": 1}}
SPANNING = pytest.mark.parametrize(
    "cfg", [COSINE, ONECYCLE, WARMUP_COSINE], ids=["cosine", "onecycle", "warmup_cosine"]
)


def scheduled(cfg: dict, total_steps: int, max_epochs: int) -> tuple[Optimizer, LRScheduler]:
    optimizer = build_optimizer(nn.Linear(2, 2), SGD)
    built = build_scheduler(optimizer, cfg, total_steps=total_steps, max_epochs=max_epochs)
    return optimizer, built["scheduler"]


def walk(optimizer: Optimizer, scheduler: LRScheduler, steps: int) -> torch.Tensor:
    """The lr and momentum each of `steps` steps trains with (a row each), the schedule stepped
    after each."""
    seen = []
    for _ in range(steps):
        group = optimizer.param_groups[0]
        seen.append((group["lr"], group["momentum"]))
        optimizer.step()
        scheduler.step()
    return torch.tensor(seen, dtype=torch.float64)


@SPANNING
def test_a_state_of_a_shorter_run_is_stretched_over_the_longer_one(
    cfg: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """Step 6 of a 10-step run (2 epochs) resumed in a 20-step one (4 epochs), loaded as Lightning
    does (the optimizer's state, then the scheduler's): the lr and momentum go on as the 20-step
    schedule has them from its step 6 to its end, not along the old 10 steps."""
    old_optimizer, old = scheduled(cfg, total_steps=10, max_epochs=2)
    walk(old_optimizer, old, 6)
    optimizer, scheduler = scheduled(cfg, total_steps=20, max_epochs=4)
    optimizer.load_state_dict(old_optimizer.state_dict())
    with caplog.at_level("INFO", logger="imgcls.models.optim"):
        scheduler.load_state_dict(old.state_dict())
    fresh_optimizer, fresh = scheduled(cfg, total_steps=20, max_epochs=4)
    whole = walk(fresh_optimizer, fresh, 20)
    torch.testing.assert_close(walk(optimizer, scheduler, 14), whole[6:])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(fresh.get_last_lr()[0])  # its end
    assert whole[6, 0] != pytest.approx(old.get_last_lr()[0])  # the new curve's lr, not the old
    (logged,) = [r.getMessage() for r in caplog.records if "stretched" in r.getMessage()]
    assert logged.startswith("LR schedule stretched from 10 to 20 steps (")
    assert logged.endswith(
        f"): the lr, {old.get_last_lr()[0]:.4g} at step 6, goes on at {whole[6, 0]:.4g} (the new "
        f"schedule's at step 6) to {whole[19, 0]:.4g} at step 19"
    )


def test_a_cosine_stretched_at_its_end_goes_on_from_the_longer_ones_value() -> None:
    """The usual extension, 1 epoch then 2: the old cosine has ended (lr 0, from which it would
    never rise); the new one is at its middle, half the lr, and ends at eta_min."""
    old_optimizer, old = scheduled(COSINE, total_steps=10, max_epochs=1)
    walk(old_optimizer, old, 10)
    assert old.get_last_lr() == [0.0]
    optimizer, scheduler = scheduled(COSINE, total_steps=20, max_epochs=2)
    optimizer.load_state_dict(old_optimizer.state_dict())
    scheduler.load_state_dict(old.state_dict())
    assert scheduler.T_max == 20
    lrs = walk(optimizer, scheduler, 10)[:, 0].tolist()
    assert lrs[0] == pytest.approx(0.05)  # 0.1 at step 10 of 20
    assert lrs == sorted(lrs, reverse=True)
    assert optimizer.param_groups[0]["lr"] == 0.0  # after the last step: eta_min


@SPANNING
def test_a_state_at_or_past_the_new_schedules_end_is_refused(cfg: dict) -> None:
    """Step 6 of 10 into a run of 6 steps or fewer (fewer batches an epoch): nothing is left of
    the new schedule to stretch over."""
    old_optimizer, old = scheduled(cfg, total_steps=10, max_epochs=2)
    walk(old_optimizer, old, 6)
    for total in (6, 4):
        _, scheduler = scheduled(cfg, total_steps=total, max_epochs=2)
        with pytest.raises(UserError) as err:
            scheduler.load_state_dict(old.state_dict())
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith("The checkpoint is at step 6 of its 10-step LR schedule (")
        assert message.endswith(
            f"this run's is {total} steps long, nothing of it left to train. Resume with a longer "
            "trainer.max_epochs, or the data and batch size it was trained with."
        )


@pytest.mark.parametrize(
    "cfg",
    [COSINE, WARMUP_COSINE, {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 3}],
    ids=["cosine", "warmup_cosine", "step"],
)
def test_a_state_of_the_same_length_or_of_none_loads_as_it_is(cfg: dict) -> None:
    """The run's own length, or a schedule without one (StepLR goes on however long the run):
    the state is the checkpoint's; and what a schedule keeps to stretch is not in its state,
    which a checkpoint saves and loads with weights_only."""
    old_optimizer, old = scheduled(cfg, total_steps=10, max_epochs=2)
    walk(old_optimizer, old, 6)
    optimizer, scheduler = scheduled(cfg, total_steps=10 if "T_max" in cfg else 30, max_epochs=2)
    optimizer.load_state_dict(old_optimizer.state_dict())
    saved = io.BytesIO()
    torch.save(old.state_dict(), saved)
    saved.seek(0)
    scheduler.load_state_dict(torch.load(saved, weights_only=True))
    assert scheduler.state_dict() == old.state_dict()
    torch.testing.assert_close(walk(optimizer, scheduler, 4), walk(old_optimizer, old, 4))


def test_a_stretching_schedule_is_still_its_torch_class() -> None:
    """An isinstance check (Lightning's) and its name (in what logs it) as before."""
    _, scheduler = scheduled(COSINE, total_steps=10, max_epochs=1)
    assert isinstance(scheduler, CosineAnnealingLR)
    assert type(scheduler).__name__ == "CosineAnnealingLR"


def test_no_scheduler_config_means_constant_lr() -> None:
    optimizer = build_optimizer(nn.Linear(2, 2), SGD)
    assert build_scheduler(optimizer, {}, total_steps=10, max_epochs=1) is None


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


ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.05}


def tiny_vit() -> nn.Module:
    return build_net("timm/vit_tiny_patch16_224", 10, img_size=32, depth=3)


def test_layer_decay_scales_each_block_below_the_head_as_timm_groups_them() -> None:
    net = tiny_vit()
    net.patch_embed.requires_grad_(False)  # frozen (FrozenBackbone): grouped all the same
    ours = {"layer_decay": 0.5, "no_decay_norm_and_bias": True}
    optimizer = build_optimizer(net, {**ADAMW, "imgcls": ours})
    groups = {g["name"]: g for g in optimizer.param_groups}
    # timm's layers for a 3-block ViT: 0 the embeddings, 1-3 the blocks, 4 the final norm + head
    for layer in range(5):
        assert groups[f"layer{layer}_decay"]["lr"] == pytest.approx(1e-3 * 0.5 ** (4 - layer))
        assert groups[f"layer{layer}_decay"]["weight_decay"] == 0.05
    owner = {id(p): g["name"] for g in optimizer.param_groups for p in g["params"]}
    assert owner[id(net.head.weight)] == "layer4_decay"
    assert owner[id(net.blocks[0].attn.qkv.weight)] == "layer1_decay"
    assert owner[id(net.patch_embed.proj.weight)] == "layer0_decay"
    assert owner[id(net.pos_embed)] == owner[id(net.cls_token)] == "layer0_no_decay"
    assert owner[id(net.blocks[2].norm1.weight)] == "layer3_no_decay"
    assert len(owner) == len(list(net.parameters()))  # every parameter, frozen ones too
    assert not net.patch_embed.proj.weight.requires_grad  # and they stay frozen


@pytest.mark.parametrize(
    ("net", "ours", "refusal"),
    [
        ("resnet18", {"layer_decay": 0.65, "no_decay_norm_and_bias": True}, "blocks timm knows"),
        ("vit", {"layer_decay": 0.65}, "no_decay_norm_and_bias=true"),
        ("vit", {"layer_decay": 1.5, "no_decay_norm_and_bias": True}, r"in \(0, 1\]"),
        (
            "vit",
            {"layer_decay": 0.65, "no_decay_norm_and_bias": True, "lr_mult": {"head": 10}},
            "lr_mult at 1",
        ),
    ],
)
def test_layer_decay_refuses_what_it_cannot_serve(net: str, ours: dict, refusal: str) -> None:
    from imgcls.utils.errors import UserError

    model = tiny_vit() if net == "vit" else build_net(net, 10)
    with pytest.raises(UserError, match=refusal):
        build_optimizer(model, {**ADAMW, "imgcls": ours})


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_lamb_and_lars_step_without_a_device_wait(name: str) -> None:
    from omegaconf import OmegaConf

    from imgcls import CONFIG_DIR
    from tests.device_waits import DeviceWaitTrace

    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "optimizer" / f"{name}.yaml"))
    net = build_net("resnet_cifar", 10)
    optimizer = build_optimizer(net, cfg)
    assert {g.get("name") for g in optimizer.param_groups} == {"backbone", "backbone_no_decay"}
    before = [p.detach().clone() for p in net.parameters()]
    for step in range(3):
        net(torch.randn(4, 3, 32, 32)).sum().backward()
        with DeviceWaitTrace() as trace:
            for group in optimizer.param_groups:  # LAMB counts steps on the CPU by design
                if "step" in group:
                    trace.host[group["step"]] = True
            optimizer.step()
        optimizer.zero_grad()
        if step:  # the first makes LAMB's CPU step count
            assert not trace.waits, [w.what for w in trace.waits]
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))


def test_no_decay_also_skips_what_a_timm_net_names() -> None:
    net = tiny_vit()
    optimizer = build_optimizer(net, {**ADAMW, "imgcls": {"no_decay_norm_and_bias": True}})
    groups = {g["name"]: g for g in optimizer.param_groups}
    decay, free = groups["backbone"], groups["backbone_no_decay"]
    assert free["weight_decay"] == 0.0
    free_ids = {id(p) for p in free["params"]}
    assert {id(net.pos_embed), id(net.cls_token)} <= free_ids  # 3-D, named by the net
    assert all(p.ndim > 1 for p in decay["params"])

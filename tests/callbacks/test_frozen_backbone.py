"""callbacks/frozen_backbone.py: the head trains alone (backbone weights and BatchNorm
statistics fixed, BatchNorm in eval mode through every validation), then from
unfreeze_at_epoch the whole net, in the optimizer's groups from the start; parameters a net
keeps fixed stay fixed; refused across devices."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from lightning.pytorch.callbacks import Callback

from imgcls.callbacks.frozen_backbone import FrozenBackbone
from imgcls.train import build_components
from imgcls.utils.errors import UserError
from tests.callbacks.tiny import TinyClassifier, loader, tiny_trainer
from tests.models.test_pretrained import SMALL_IMAGES, Snapshots, folder_overrides


def test_frozen_backbone_learns_only_after_unfreezing(make_cfg, tmp_path: Path) -> None:
    # a file as DataParallel saves it: a state_dict ('module.' prefixes) with a 1000-class head
    torch.manual_seed(1)
    source = torchvision.models.resnet18(num_classes=1000).state_dict()
    weights = tmp_path / "resnet18_imagenet.pth"
    torch.save({f"module.{k}": v for k, v in source.items()}, weights)
    cfg = make_cfg(
        *folder_overrides(tmp_path),
        *SMALL_IMAGES,
        "model=resnet18",
        f"model.net.weights_path={weights}",
        "model.net.head_init=xavier",
        "callbacks=[default,frozen_backbone]",
        "callbacks.frozen_backbone.unfreeze_at_epoch=1",
        "optimizer.imgcls.lr_mult.head=10",
        "optimizer.lr=0.01",
        "trainer.max_epochs=2",
        "test=false",
    )
    objects = build_components(cfg)
    model, trainer = objects["model"], objects["trainer"]
    start = {k: v.clone() for k, v in model.net.state_dict().items()}
    backbone = [k for k in start if not k.startswith("fc.")]
    assert all(torch.equal(start[k], source[k]) for k in backbone)  # loaded, prefix stripped
    assert model.net.fc.weight.shape == (3, 512)  # a new head for 3 classes
    assert not model.net.fc.bias.any()  # xavier: zero bias, weights within the xavier bound
    assert model.net.fc.weight.abs().max() <= math.sqrt(6 / (512 + 3))

    snapshots = Snapshots()
    trainer.callbacks.append(snapshots)
    trainer.fit(model, datamodule=objects["datamodule"])
    after_frozen, after_unfrozen = snapshots.states
    # epoch 0: only the head moved; backbone weights and BatchNorm statistics are untouched
    assert all(torch.equal(after_frozen[k], start[k]) for k in backbone)
    assert not torch.equal(after_frozen["fc.weight"], start["fc.weight"])
    # epoch 1: unfrozen, the backbone learns
    assert not torch.equal(after_unfrozen["conv1.weight"], start["conv1.weight"])
    assert not torch.equal(after_unfrozen["bn1.running_mean"], start["bn1.running_mean"])

    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert set(groups) == {"backbone", "head"}
    assert groups["head"]["initial_lr"] == pytest.approx(10 * groups["backbone"]["initial_lr"])
    head_params = {id(p) for p in model.net.fc.parameters()}
    assert {id(p) for p in groups["head"]["params"]} == head_params


class Modes(Callback):
    """(epoch, whether the backbone's BatchNorm normalized in training mode) of every step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, bool]] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.steps.append((trainer.current_epoch, pl_module.net[1].training))


def state(model: TinyClassifier) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def test_a_frozen_backbone_stays_fixed_through_validations_inside_the_epoch() -> None:
    model, modes = TinyClassifier(), Modes()
    trainer = tiny_trainer(
        callbacks=[FrozenBackbone(unfreeze_at_epoch=None), modes],
        max_epochs=2,
        limit_train_batches=4,
        val_check_interval=2,  # validation after batches 2 and 4 of each epoch
        limit_val_batches=1,
    )
    start = state(model)
    trainer.fit(model, loader(), loader())
    assert modes.steps == [(0, False)] * 4 + [(1, False)] * 4  # never unfrozen
    end = state(model)
    backbone = [k for k in start if not k.startswith("5.")]  # 5: the head
    assert all(torch.equal(end[k], start[k]) for k in backbone)  # running stats included
    assert not torch.equal(end["5.weight"], start["5.weight"])


def test_unfreezing_trains_the_whole_net_in_the_groups_it_had() -> None:
    model, modes, snapshots = TinyClassifier(), Modes(), Snapshots()
    model.net[0].bias.requires_grad_(False)  # fixed by the net's design
    trainer = tiny_trainer(
        callbacks=[FrozenBackbone(unfreeze_at_epoch=1), modes, snapshots], max_epochs=2
    )
    start = state(model)
    trainer.fit(model, loader())
    assert modes.steps == [(0, False), (0, False), (1, True), (1, True)]
    frozen, unfrozen = snapshots.states
    assert torch.equal(frozen["0.weight"], start["0.weight"])
    assert torch.equal(frozen["1.running_mean"], start["1.running_mean"])
    assert not torch.equal(unfrozen["0.weight"], start["0.weight"])
    assert not torch.equal(unfrozen["1.running_mean"], start["1.running_mean"])
    assert torch.equal(unfrozen["0.bias"], start["0.bias"])
    assert not model.net[0].bias.requires_grad
    (group,) = trainer.optimizers[0].param_groups  # no group added at unfreezing
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}


def test_unfreezing_across_devices_is_refused() -> None:
    trainer = SimpleNamespace(world_size=2, strategy=None)
    with pytest.raises(UserError, match="does not work across devices"):
        FrozenBackbone(unfreeze_at_epoch=1).setup(trainer, TinyClassifier(), "fit")
    model = TinyClassifier()
    FrozenBackbone(unfreeze_at_epoch=None).setup(trainer, model, "fit")  # frozen throughout: fine
    assert not model.net[0].weight.requires_grad
    assert model.head.weight.requires_grad

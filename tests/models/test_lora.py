"""models/lora.py: the family's layers adapted, only adapters and head training, the adapters merged
into plain weights for everything that leaves a run (eval, predict, export, a teacher), and a LoRA
run with EMA, layer decay, SWA, frozen-backbone fine-tuning and a resume."""

import copy
import logging
import shutil
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from imgcls.callbacks.frozen_backbone import FrozenBackbone
from imgcls.export import export
from imgcls.models.classifier import ImageClassifier
from imgcls.models.distill import build_teacher
from imgcls.models.loading import classifier_of, load_classifier
from imgcls.models.lora import (
    ADAPTER,
    adapted,
    apply_lora,
    fixed_parameters,
    merged_weights,
)
from imgcls.models.optim import build_optimizer
from imgcls.models.pretrained import read_state_dict
from imgcls.run.compose import compose_config
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.helpers import compose_task

TINY = [
    "data=fake",
    "data.num_classes=3",
    "data.train_size=32",
    "data.val_size=8",
    "data.test_size=8",
    "data.batch_size=16",
    "data.image_size=32",
    "logger=csv",
    "test=false",
]
VIT = ["model.net.name=timm/test_vit", "+model.net.img_size=32", "model.lora.rank=4"]
LORA = {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": None}
ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.05}
OPTIMIZER = {"_target_": "torch.optim.SGD", "lr": 0.1}


def merge_into_plain(net: nn.Module) -> nn.Module:
    """peft's own merge, the reference `merged_weights` is held to: `net` with its adapters
    merged into its layers' weights and peft's wrappers replaced by the plain layers (in
    place; returned); a net without adapters as it is."""
    if not adapted(net):
        return net
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [
        name for name, module in net.named_modules() if isinstance(module, BaseTunerLayer) and name
    ]
    for name in wrapped:
        layer = net.get_submodule(name)
        layer.merge(adapter_names=[ADAPTER])
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, layer.get_base_layer())
    return net


def quiet_cfg(root: Path, *overrides: str, run_dir: Path | None = None):
    return compose_config(
        "train",
        [
            f"paths.log_dir={root / 'logs'}",
            "extras.print_config=false",
            "++callbacks.rich_progress_bar=null",
            *TINY,
            *overrides,
        ],
        output_dir=run_dir or root / "run",
    )


def adapted_vit(seed: int = 0) -> nn.Module:
    """test_vit with rank-4 adapters whose B is not zero (as after training)."""
    torch.manual_seed(seed)
    net = timm.create_model("test_vit", num_classes=3, img_size=32)
    apply_lora(net, LORA, "head")
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    return net.eval()


def adapters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if ".lora_" in k}


@pytest.mark.parametrize(
    ("name", "head", "layers"),
    [
        ("test_vit", "head", ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]),
        ("test_convnext", "head.fc", ["mlp.fc1", "mlp.fc2"]),
    ],
)
def test_a_familys_layers_are_adapted_and_only_adapters_and_head_train(
    name: str, head: str, layers: list[str]
) -> None:
    net = timm.create_model(name, num_classes=3)
    linears = {n for n, m in net.named_modules() if isinstance(m, nn.Linear) and n != head}
    applied = apply_lora(net, LORA, head)
    assert applied["targets"] == layers
    wrapped = {n.removesuffix(".lora_A") for n, _ in net.named_modules() if n.endswith(".lora_A")}
    assert wrapped == linears  # every block linear, nothing else (not the head, no conv)
    training = {n for n, p in net.named_parameters() if p.requires_grad}
    in_head = {f"{head}.weight", f"{head}.bias"}
    assert training == in_head | {n for n, _ in net.named_parameters() if ".lora_" in n}
    fixed = {id(p) for p in fixed_parameters(net, head)}
    assert fixed == {id(p) for n, p in net.named_parameters() if n not in training}
    assert type(net).__name__ in ("VisionTransformer", "ConvNeXt")  # its class and methods kept


def test_what_cannot_be_adapted_is_refused_in_one_line() -> None:
    with pytest.raises(UserError, match=r"no default layers for LeNet.*model\.lora\.targets="):
        ImageClassifier({"name": "lenet"}, 3, OPTIMIZER, lora=LORA)
    convnext = timm.create_model("test_convnext", num_classes=3)
    with pytest.raises(UserError, match=r"conv_dw \(Conv2d, groups=.*Linear and ungrouped"):
        apply_lora(convnext, {**LORA, "targets": ["conv_dw"]}, "head.fc")
    with pytest.raises(UserError, match=r"matches no layer of ConvNeXt besides its head"):
        apply_lora(convnext, {**LORA, "targets": ["fc"]}, "head.fc")
    with pytest.raises(UserError, match=r"model\.probe trains the head alone"):
        ImageClassifier({"name": "lenet"}, 3, OPTIMIZER, probe={"enabled": True}, lora=LORA)
    plain = ImageClassifier({"name": "lenet"}, 3, OPTIMIZER, lora={**LORA, "rank": 0})
    assert not adapted(plain.net)  # rank 0 (or null): off


def test_merging_gives_the_plain_net_with_the_adapted_logits() -> None:
    net = adapted_vit()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = net(images)
    state = net.state_dict()
    merged = merge_into_plain(copy.deepcopy(net))
    fresh = timm.create_model("test_vit", num_classes=3, img_size=32)
    assert merged.state_dict().keys() == fresh.state_dict().keys()  # no wrapper left
    assert not adapted(merged)
    # the same plain weights from the tensors alone (what loading a checkpoint does)
    from_tensors = merged_weights({f"net.{k}": v for k, v in state.items()}, LORA)
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(from_tensors[f"net.{key}"], value)
    with torch.no_grad():
        torch.testing.assert_close(merged(images), expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(fresh.eval()(images), expected, atol=1e-3)  # B @ A counts
    assert merge_into_plain(merged) is merged  # a plain net as it is


def test_adapted_convolutions_merge_alike() -> None:
    """A Conv2d's update, 4x4 (ConvNeXt's stem) and 2x2 (its downsampling), merged by peft and
    from the tensors alike."""
    torch.manual_seed(0)
    net = timm.create_model("test_convnext", num_classes=3)
    apply_lora(net, {**LORA, "targets": ["stem.0", "downsample.1"]}, "head.fc")
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = net.eval()(images)
    from_tensors = merged_weights(net.state_dict(), LORA)
    merged = merge_into_plain(net)
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(from_tensors[key], value)
    with torch.no_grad():
        torch.testing.assert_close(merged(images), expected, atol=1e-4, rtol=1e-4)


def test_the_optimizer_sees_only_adapters_and_head_each_adapter_at_its_blocks_decay() -> None:
    net = adapted_vit()
    fixed = fixed_parameters(net, "head")
    ours = {"layer_decay": 0.5, "no_decay_norm_and_bias": True}
    optimizer = build_optimizer(net, {**ADAMW, "imgcls": ours}, fixed=fixed)
    owner = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    trained = {id(p) for p in net.parameters() if p.requires_grad}
    assert owner.keys() == trained  # no frozen weight, no optimizer state for one
    # timm's layers for test_vit (6 blocks): 0 embeddings, 1-6 blocks, 7 final norm + head
    qkv = net.blocks[1].attn.qkv
    assert owner[id(qkv.lora_A.default.weight)]["lr"] == pytest.approx(1e-3 * 0.5 ** (7 - 2))
    assert owner[id(qkv.lora_A.default.weight)]["name"] == "layer2_decay"  # timm's layer id
    assert owner[id(net.head.weight)]["lr"] == pytest.approx(1e-3)
    head_lr = {**ADAMW, "imgcls": {"lr_mult": {"head": 10}}}
    plain = build_optimizer(net, head_lr, net.head, fixed=fixed)
    assert {id(p) for g in plain.param_groups for p in g["params"]} == trained
    lrs = {g["name"]: g.get("lr", 1e-3) for g in plain.param_groups}
    assert lrs["head"] == pytest.approx(1e-2)


def test_a_frozen_backbone_holds_the_adapters_until_it_unfreezes() -> None:
    """callbacks.frozen_backbone with LoRA: the head alone first, then the adapters (the weights
    under them never)."""
    torch.manual_seed(0)
    model = ImageClassifier({"name": "timm/test_vit", "img_size": 32}, 3, OPTIMIZER, lora=LORA)
    callback = FrozenBackbone(unfreeze_at_epoch=1)
    callback.freeze_before_training(model)
    head = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == head
    optimizer = build_optimizer(model.net, OPTIMIZER, model.head, fixed=model.fixed_parameters())
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    lora = {id(p) for n, p in model.net.named_parameters() if ".lora_" in n}
    assert grouped == head | lora  # the adapters wait in their group, frozen
    callback.finetune_function(model, 1, optimizer)
    assert {id(p) for p in model.parameters() if p.requires_grad} == head | lora


def test_a_lora_step_waits_for_nothing_and_compiles_whole() -> None:
    """No host sync in an adapted net's training step (its dropout included), and model.compile
    takes the adapted net: dynamo captures it as one graph (fullgraph; the eager backend spares
    the test inductor's code generation), gradients reaching the adapters and the head alone."""
    from tests.device_waits import DeviceWaitTrace

    torch.manual_seed(0)
    net = {"name": "timm/test_vit", "img_size": 32, "depth": 1}
    lora = {**LORA, "dropout": 0.1}
    model = ImageClassifier(net, 3, OPTIMIZER, lora=lora, compile=True).train()
    assert model._compiled_net._orig_mod is model.net
    optimizer = build_optimizer(model.net, OPTIMIZER, model.head, fixed=model.fixed_parameters())
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    with DeviceWaitTrace() as trace:
        model.objective.losses(model.net(images), targets).mean().backward()
        optimizer.step()
    assert not trace.waits, trace.waits[:3]
    optimizer.zero_grad(set_to_none=True)
    compiled = torch.compile(model.net, backend="eager", fullgraph=True)
    model.objective.losses(compiled(images), targets).mean().backward()
    graded = {n for n, p in model.net.named_parameters() if p.grad is not None}
    assert graded == {n for n, p in model.net.named_parameters() if p.requires_grad}
    assert any(".lora_A." in n for n in graded)


def test_gradient_checkpointing_still_reaches_the_adapters() -> None:
    """timm's checkpointing (model.net.grad_checkpointing) is non-reentrant: the frozen patch
    embedding's output needs no grad, yet the adapters inside the checkpointed blocks get theirs
    (a reentrant checkpoint would leave them none, silently)."""
    net = adapted_vit().train()
    net.set_grad_checkpointing(True)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    graded = {n for n, p in net.named_parameters() if p.grad is not None}
    assert graded == {n for n, p in net.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A LoRA ViT trained two epochs with an EMA and layer decay: its run dir and metrics."""
    root = tmp_path_factory.mktemp("lora")
    metrics, _ = train(
        quiet_cfg(
            root,
            *VIT,
            "optimizer=adamw",
            "optimizer.imgcls.layer_decay=0.75",
            "trainer.max_epochs=2",
            "callbacks=[default,ema]",
            "callbacks.ema.decay=0.5",
            "callbacks.model_checkpoint.save_top_k=-1",
        )
    )
    return root / "run", metrics


def test_a_lora_run_trains_the_adapters_alone_and_checkpoints_them(lora_run) -> None:
    run, _ = lora_run
    first = torch.load(run / "checkpoints" / "epoch_000.ckpt", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    lora = last["hyper_parameters"]["lora"]
    assert lora["rank"] == 4
    assert lora["targets"] == ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
    raw, averaged = first["current_model_state"], first["state_dict"]
    later = last["current_model_state"]
    assert adapters(raw)
    assert all(not torch.equal(raw[k], later[k]) for k in adapters(raw) if "lora_A" in k)
    frozen = [k for k in raw if k.startswith("net.") and ".lora_" not in k and "head" not in k]
    assert all(torch.equal(raw[k], later[k]) for k in frozen)  # the backbone never moved
    assert all(torch.equal(averaged[k], raw[k]) for k in frozen)  # nor its EMA
    assert not all(torch.equal(averaged[k], raw[k]) for k in adapters(raw))  # adapters averaged


def test_eval_predict_export_and_a_teacher_take_the_adapters_merged(
    lora_run, tmp_path: Path
) -> None:
    run, _ = lora_run
    best = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best, weights_only=True)
    unmerged = classifier_of(checkpoint["hyper_parameters"]).eval()  # adapters as trained
    unmerged.load_state_dict(checkpoint["state_dict"])
    assert adapted(unmerged.net)
    # what eval and predict load (load_classifier), and a teacher to distil from
    teacher = build_teacher(str(best), 3, unmerged.class_names, None)
    assert not adapted(teacher)
    plain = timm.create_model("test_vit", num_classes=3, img_size=32)
    assert teacher.state_dict().keys() == plain.state_dict().keys()  # timm's own keys
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = unmerged.net(images)
        torch.testing.assert_close(teacher(images), expected, atol=1e-5, rtol=1e-5)
    # a new run started from it (model.net.weights_path=best.ckpt) takes the merged weights
    plain.load_state_dict(read_state_dict(best))
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(images), expected, atol=1e-5, rtol=1e-5)
    card = export(compose_task("export", tmp_path, f"ckpt_path={best}", "format=torchscript"))
    scripted = torch.jit.load(str(tmp_path / "export" / card["file"]))
    assert not any(".lora_" in k for k in scripted.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), expected, atol=1e-5, rtol=1e-5)


def test_a_resume_continues_with_the_adapter(
    lora_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(lora_run[0], run)
    ckpt = run / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match=r"trained with model\.lora\.rank=4 alpha=16"):
        train(quiet_cfg(tmp_path, *VIT, "model.lora.rank=2", f"ckpt_path={ckpt}", run_dir=run))
    started: dict[str, torch.Tensor] = {}
    on_train_start = ImageClassifier.on_train_start

    def snapshot(model: ImageClassifier) -> None:
        started.update({k: v.clone() for k, v in adapters(model.state_dict()).items()})
        on_train_start(model)

    monkeypatch.setattr(ImageClassifier, "on_train_start", snapshot)
    saved = torch.load(ckpt, weights_only=True)
    with caplog.at_level(logging.INFO):
        _, objects = train(
            quiet_cfg(
                tmp_path,
                *VIT,
                "optimizer=adamw",
                "optimizer.imgcls.layer_decay=0.75",
                "trainer.max_epochs=3",
                "callbacks=[default,ema]",
                "callbacks.ema.decay=0.5",
                f"ckpt_path={ckpt}",
                run_dir=run,
            )
        )
    assert "LoRA rank 4 (alpha 16) on 24 layers" in caplog.text
    assert "parameters train (adapters" in caplog.text
    raw = adapters(saved["current_model_state"])
    assert started.keys() == raw.keys()
    assert all(torch.equal(started[k], raw[k]) for k in raw)  # the adapters it had, not fresh
    assert objects["trainer"].global_step > saved["global_step"]


def test_swa_averages_the_adapters_into_a_checkpoint_that_loads_merged(tmp_path: Path) -> None:
    train(
        quiet_cfg(
            tmp_path,
            "model.net.name=timm/test_convnext",
            "model.lora.rank=4",
            "trainer.max_epochs=1",
            "callbacks=[default,swa]",
            "callbacks.swa.swa_lrs=0.01",
            "callbacks.swa.swa_epoch_start=1",
            "callbacks.swa.annealing_epochs=1",
        )
    )
    swa = tmp_path / "run" / "checkpoints" / "swa.ckpt"
    state = torch.load(swa, weights_only=True)["state_dict"]
    assert adapters(state)
    assert not adapted(load_classifier(swa).net)


@pytest.mark.slow(seconds=15)
def test_two_ddp_ranks_train_the_same_adapters_and_the_checkpoint_holds_them(
    tmp_path: Path,
) -> None:
    """trainer=ddp_sim with LoRA: DDP syncs the adapters' and the head's gradients (the frozen
    backbone has none to sync), both ranks end on the same metrics, and best.ckpt holds the
    adapters, which loading merges into the plain net."""
    import json
    import re

    from tests.helpers import CLI_QUIET, run_cli

    tiny = [o for o in TINY if o not in ("test=false", "logger=csv")]
    result = run_cli(
        "train.py",
        [
            "trainer=ddp_sim",
            *tiny,
            *VIT,
            "trainer.max_epochs=1",
            f"paths.log_dir={tmp_path}",
            "+callbacks.witness._target_=tests.faults.TrainableWeightsPerRank",
            f"+callbacks.witness.folder={tmp_path / 'weights'}",
            *CLI_QUIET,
        ],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    per_rank = {}
    for log_file in ("train.log", "train_rank1.log"):
        line = re.search(r"rank (\d) metrics: (\{.*\})", (run / log_file).read_text())
        per_rank[int(line.group(1))] = json.loads(line.group(2))
    for name in ("val/loss", "test/loss", "train/loss"):
        assert per_rank[0][name] == pytest.approx(per_rank[1][name]), name
    ranks = [torch.load(tmp_path / "weights" / f"rank{r}.pt") for r in (0, 1)]
    assert any("lora_B" in name for name in ranks[0])  # the adapters trained, the head too
    assert "net.head.weight" in ranks[0]
    for name, weight in ranks[0].items():  # each step's gradients were averaged over both
        torch.testing.assert_close(ranks[1][name], weight, msg=name)
    assert any(weight.abs().sum() > 0 for n, weight in ranks[0].items() if "lora_B" in n)
    best = run / "checkpoints" / "best.ckpt"
    state = torch.load(best, weights_only=True)["state_dict"]
    assert any("lora_A" in key for key in state)
    model = load_classifier(best)
    assert not any("lora_" in key for key in model.state_dict())  # merged into plain weights
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)

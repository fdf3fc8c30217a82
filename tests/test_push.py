"""push.py: a run shared in timm's format, loaded by timm with the run's logits, uploaded with one
huggingface_hub call (a fake Hub that copies into a folder here), and taken back by eval and
predict as `ckpt_path=timm/local-dir:`; what cannot be pushed said in one line."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from imgcls.eval import evaluate
from imgcls.input_contract import InputContract
from imgcls.models.loading import load_classifier
from imgcls.predict import predict
from imgcls.push import main, push, timm_data_config
from imgcls.run.compose import compose_config
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.data_factory import PALETTE, write_class_tree, write_image, write_label_csv
from tests.helpers import compose_task

CLASSES = ["cat", "dog", "fox"]
STATS = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir of a tiny timm ViT fine-tuned briefly on a 3-class folder of photos, tested
    (metrics.json). It starts from a model in a folder as timm's save_for_hf writes one for the
    Hub (`timm/local-dir:`, pretrained), whose preprocessing (its own mean and std, 36 -> 32 px)
    the run takes from the model's config."""
    import timm
    from timm.models import save_for_hf

    tmp = tmp_path_factory.mktemp("timm_run")
    root = write_class_tree(tmp / "photos", CLASSES, 8)
    source = timm.create_model("test_vit", num_classes=10, img_size=32)
    contract = timm_data_config(InputContract(36, 32, **STATS))
    save_for_hf(source, str(tmp / "source"), safe_serialization=True, data_config=contract)
    overrides = [
        f"paths.log_dir={tmp / 'logs'}",
        "extras.print_config=false",
        "callbacks=[model_checkpoint]",
        "logger=csv",
        "data=folder",
        f"data.root={root}",
        "data.num_workers=0",
        "data.batch_size=8",
        f"model.net.name=timm/local-dir:{tmp / 'source'}",
        "model.net.pretrained=true",
        "optimizer=adamw",
        "optimizer.lr=1e-3",
        "trainer.max_epochs=1",
        "+trainer.num_sanity_val_steps=0",
    ]
    train(compose_config("train", overrides, output_dir=tmp / "run"))
    return tmp / "run"


@pytest.fixture(scope="module")
def pushed(timm_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`imgcls-push RUN --local DIR` of that run."""
    return push(timm_run, local=tmp_path_factory.mktemp("pushed") / "shared")


def test_the_pushed_folder_is_timms_and_gives_the_runs_logits(timm_run: Path, pushed: Path) -> None:
    folder = pushed
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    import timm

    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    run_net = load_classifier(timm_run / "checkpoints" / "best.ckpt").net
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(images), run_net(images), atol=1e-6)
    config = json.loads((folder / "config.json").read_text())
    assert (config["architecture"], config["num_classes"]) == ("test_vit", 3)
    assert config["label_names"] == CLASSES
    timm_data = timm.data.resolve_data_config(model=loaded)
    assert timm_data["input_size"] == (3, 32, 32)
    assert math.floor(32 / timm_data["crop_pct"]) == 36  # timm resizes to our eval resize
    assert timm_data["crop_mode"] == "center"
    for key, value in STATS.items():
        assert timm_data[key] == pytest.approx(value)
    card = (folder / "README.md").read_text()
    tested = json.loads((timm_run / "metrics.json").read_text())
    assert f"| test/acc | {tested['test/acc']:.4f} |" in card
    assert "FolderDataModule" in card  # the data
    assert "pretrained: true" in card  # the recipe
    assert f'timm.create_model("local-dir:{folder.resolve()}", pretrained=True)' in card


def test_eval_and_predict_take_the_pushed_model_as_the_run_itself(
    timm_run: Path, pushed: Path, tmp_path: Path
) -> None:
    """`ckpt_path=timm/local-dir:DIR`: the class names from its label_names, the preprocessing
    from its pretrained config: eval gives the run's own test metrics on its data, predict the
    checkpoint's own predictions."""
    folder = pushed
    data = ["data=folder", f"data.root={timm_run.parent / 'photos'}", "data.num_workers=0"]
    cfg = compose_task("eval", tmp_path, f"ckpt_path=timm/local-dir:{folder}", *data)
    evaluated, _ = evaluate(cfg)
    tested = json.loads((timm_run / "metrics.json").read_text())
    for name in ("test/acc", "test/loss"):
        assert evaluated[name] == pytest.approx(tested[name], abs=1e-6), name
    assert list(cfg.data.mean) == pytest.approx(STATS["mean"])
    assert (cfg.data.eval_resize, cfg.data.eval_crop) == (36, 32)

    image = write_image(tmp_path / "new" / "one.png", PALETTE[1], size=(50, 40))
    shared, own = (
        predict(compose_task("predict", tmp_path, f"ckpt_path={model}", f"input={image}"))[0]
        for model in (f"timm/local-dir:{folder}", timm_run / "checkpoints" / "best.ckpt")
    )
    assert shared.classes == own.classes
    assert set(shared.classes) == set(CLASSES)
    assert shared.probabilities == pytest.approx(own.probabilities, abs=1e-5)


def test_a_pushed_multilabel_model_is_read_back_with_its_task_and_thresholds(
    tmp_path: Path,
) -> None:
    """timm's format has no key for a task or per-class thresholds: push adds them under
    `imgcls` in config.json (timm still loads the folder), and eval and predict read the model
    back as the multi-label model it is, at its fitted thresholds."""
    import timm

    labels = write_label_csv(tmp_path / "photos", per_class=4)
    overrides = [
        f"paths.log_dir={tmp_path / 'logs'}",
        "extras.print_config=false",
        "callbacks=[model_checkpoint]",
        "logger=csv",
        "data=csv",
        f"data.csv={labels}",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.train_crop=32",
        "data.eval_resize=32",
        "data.eval_crop=32",
        "model.net.name=timm/test_vit",
        "+model.net.img_size=32",
        "model.task=multilabel",
        "model.threshold=fit",
        "trainer.max_epochs=1",
        "test=false",
    ]
    train(compose_config("train", overrides, output_dir=tmp_path / "run"))
    run_model = load_classifier(tmp_path / "run" / "checkpoints" / "best.ckpt")
    folder = push(tmp_path / "run", local=tmp_path / "shared")
    said = json.loads((folder / "config.json").read_text())["imgcls"]
    assert said["task"] == "multilabel"
    assert set(said["thresholds"]) == {"cat", "dog", "person"}
    timm.create_model(f"local-dir:{folder}", pretrained=True)  # timm reads past our key
    shared = load_classifier(f"timm/local-dir:{folder}")
    assert shared.hparams.task == "multilabel"
    assert shared.class_names == run_model.class_names
    fitted = run_model.objective.thresholds
    assert (fitted != 0.5).any()  # fitted on validation, not the starting 0.5
    torch.testing.assert_close(shared.objective.thresholds, fitted)


class FakeHub:
    """HfApi's two calls push makes, into a folder here instead of the Hub."""

    made: dict[str, bool] = {}
    root = Path()

    def create_repo(self, repo_id: str, private: bool, exist_ok: bool, repo_type: str) -> str:
        FakeHub.made[repo_id] = private
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id: str, folder_path: str, **_: object) -> None:
        shutil.copytree(folder_path, FakeHub.root / repo_id)


def test_push_uploads_the_folder_with_one_call(
    timm_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(FakeHub, "root", tmp_path / "hub")
    url = push(timm_run / "checkpoints" / "best.ckpt", repo="someone/tiny-vit", private=True)
    assert url == "https://huggingface.co/someone/tiny-vit"
    assert FakeHub.made["someone/tiny-vit"] is True  # private
    uploaded = tmp_path / "hub" / "someone" / "tiny-vit"  # the folder --local writes
    assert {p.name for p in uploaded.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    card = (uploaded / "README.md").read_text()
    assert 'timm.create_model("hf-hub:someone/tiny-vit", pretrained=True)' in card

    def refused(self, *args: object, **kwargs: object) -> None:
        raise OSError("401 Client Error: Unauthorized\nInvalid token")

    monkeypatch.setattr(FakeHub, "create_repo", refused)
    with pytest.raises(UserError, match=r"Could not upload to someone/x .*Unauthorized") as err:
        push(timm_run, repo="someone/x")
    assert "\n" not in str(err.value)


def test_what_cannot_be_pushed_is_one_line(
    timm_run: Path, tmp_path: Path, command_exit, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = tmp_path / "ours.ckpt"
    torch.save({"hyper_parameters": {"net": {"name": "resnet18"}}, "state_dict": {}}, ours)
    with pytest.raises(UserError, match="only timm's nets push in timm's format"):
        push(ours, local=tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError, match="is not an empty folder"):
        push(timm_run, local=tmp_path / "full")
    with pytest.raises(UserError, match="a Hub repo is <user or org>/<name>"):
        push(timm_run, repo="no-owner")
    with pytest.raises(UserError, match=r"has no best\.ckpt"):
        push(tmp_path, local=tmp_path / "out")
    code = command_exit(main, "imgcls-push", str(tmp_path / "nope"), "--local", "out")
    assert code == f"UserError: {tmp_path / 'nope'} does not exist: pass a run dir or a checkpoint."

"""models/class_map.py: a model scored on some of its classes, found by name or in timm's
class-map format, on those columns of its logits alone."""

from pathlib import Path

import pytest
import torch

from imgcls.eval import evaluate
from imgcls.models.class_map import scored_on
from imgcls.models.classifier import ImageClassifier
from imgcls.models.loading import load_classifier
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.data_factory import write_class_tree
from tests.test_eval import FOUR_BATCHES, QUICK


def test_a_model_is_scored_on_the_datas_classes_found_by_name_or_in_a_class_map(
    make_cfg, tmp_path: Path
) -> None:
    """Data with 3 of the model's 10 classes (by name, or renamed by timm's class-map format:
    line i names the data's class that is the model's class i): the prediction is the best of
    those 3 columns of the logits, and the report is in the data's classes."""

    train(make_cfg(*QUICK, FOUR_BATCHES, "trainer.max_epochs=1", "test=false"))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    columns = [3, 5, 7]
    by_name = write_class_tree(tmp_path / "digits", ["3", "5", "7"], per_class=10)
    renamed = write_class_tree(tmp_path / "words", ["five", "seven", "three"], per_class=10)
    class_map = tmp_path / "class_map.txt"  # the model's classes 3, 5, 7; the rest blank
    class_map.write_text("\n\n\nthree\n\nfive\n\nseven\n")
    runs = {
        "by_name": [f"data.root={by_name}"],
        "mapped": [f"data.root={renamed}", f"class_map={class_map}"],
    }
    for name, overrides in runs.items():
        folder = ["data=folder", "data.split=[0.4,0.2,0.4]", "data.num_workers=0", *overrides]
        cfg = make_cfg(f"ckpt_path={best}", *folder, config_name="eval", run_dir=tmp_path / name)
        evaluated, objects = evaluate(cfg)
        datamodule, net = objects["datamodule"], load_classifier(best).net.eval()
        order = columns if name == "by_name" else [5, 7, 3]  # five, seven, three
        right = seen = 0
        with torch.inference_mode():
            for images, labels in datamodule.eval_batches("test", torch.device("cpu")):
                right += int((net(images)[:, order].argmax(1) == labels).sum())
                seen += len(labels)
        assert evaluated["test/acc"] == pytest.approx(right / seen), name
        per_class = (tmp_path / name / "per_class.csv").read_text().splitlines()
        assert [row.split(",")[0] for row in per_class[1:]] == datamodule.class_names
    class_map.write_text("\n\n\nthree\n\nfive\n")  # seven has no line: one line says so
    cfg = make_cfg(
        f"ckpt_path={best}",
        "data=folder",
        f"data.root={renamed}",
        f"class_map={class_map}",
        config_name="eval",
        run_dir=tmp_path / "x",
    )
    with pytest.raises(UserError, match=r"1 classes the model has no class for \(seven\)"):
        evaluate(cfg)


def test_a_compiled_models_forward_picks_the_datas_columns_too() -> None:
    """A checkpoint trained with model.compile=true runs its compiled net: the one compiled after
    the columns are picked (torch.compile is lazy: nothing compiles here)."""
    model = ImageClassifier(
        net={"name": "lenet"},
        num_classes=10,
        optimizer={},
        compile=True,
        class_names=list("abcdefghij"),
    )
    scored_on(model, ["c", "a"], None)
    assert model._compiled_net._orig_mod is model.net
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.net(images), model.net.net(images)[:, [2, 0]])

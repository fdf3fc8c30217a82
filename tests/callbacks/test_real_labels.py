"""callbacks/real_labels.py: ImageNet val images scored against ReaL's label sets, found by file
name, in the test pass, on every rank's share."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from timm.data import ImageNetInfo

from imgcls.callbacks.real_labels import (
    RealLabelsScore,
    read_real_labels,
    real_labels_score,
    real_rows,
)
from imgcls.data.sources.digits import DigitsDataModule
from imgcls.data.sources.folder import FolderDataModule
from imgcls.eval import evaluate
from imgcls.models.loading import load_classifier
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.data_factory import IMAGENET_WNIDS, PALETTE, write_class_tree, write_image
from tests.test_eval import QUICK

IMAGENET = list(ImageNetInfo().label_names())  # class index -> WordNet id, as real.json counts


def test_each_files_set_is_its_real_json_row_in_the_datas_classes() -> None:
    """Rows by the val file's number; ImageNet indices become the data's columns (its classes in
    its order, some of the 1000), a class the data lacks is dropped, an empty set stays empty."""
    labels = [[0], [2, 1], [], [5], [1, 999]]
    wnids = [IMAGENET[2], IMAGENET[1], IMAGENET[0]]  # the data's classes, another order
    files = [f"val/x/ILSVRC2012_val_{n:08d}.JPEG" for n in (5, 1, 2, 3, 4)]
    rows = real_rows(labels, files, wnids, IMAGENET)
    assert rows.tolist() == [
        [False, True, False],  # 5: class 1 (999 is not the data's)
        [False, False, True],  # 1: class 0
        [True, True, False],  # 2: classes 2 and 1
        [False, False, False],  # 3: none fits
        [False, False, False],  # 4: class 5, not the data's
    ]
    for name in ("ILSVRC2012_val_00000006.JPEG", "photo.jpg"):
        with pytest.raises(UserError, match="not one of ImageNet's 5 val images"):
            real_rows(labels, [name], wnids, IMAGENET)


def test_each_rank_scores_its_share_by_position_and_empty_sets_are_left_out() -> None:
    """Rank 1 of 2 scores test images 1, 3, 5, ... (data/loaders.py's unpadded order): its
    batches take those rows of the table; top-1 and top-5 against the sets, over the images
    whose set is not empty."""
    rows = torch.zeros(7, 6, dtype=torch.bool)
    rows[1, 0] = rows[3, 4] = True  # rank 1's images: 1 and 3 have a set, 5 none
    rows[0, :] = True  # rank 0's: never read here
    logits = torch.tensor([[9.0, 1, 0, 0, 0, 0], [0, 9.0, 8, 7, 6, 0], [0, 0, 9.0, 0, 0, 0]])
    score = RealLabelsScore(rows)
    loader = SimpleNamespace(batch_size=2)
    trainer = SimpleNamespace(world_size=2, global_rank=1, test_dataloaders=loader)
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda *a: logged.append(a))
    logged: list = []
    score.on_test_epoch_start(trainer, module)
    score.on_test_batch_end(trainer, module, {"logits": logits[:2]}, None, 0)
    score.on_test_batch_end(trainer, module, {"logits": logits[2:]}, None, 1)
    score.on_test_epoch_end(trainer, module)
    # image 1: top-1 class 0, in its set; image 3: class 4 fifth of its top 5; image 5: left out
    assert dict(logged) == {
        "test/real_acc": pytest.approx(0.5),
        "test/real_acc_top5": pytest.approx(1.0),
    }
    score.on_test_epoch_start(trainer, module)  # an image dropped on the device: refused
    with pytest.raises(UserError, match="test batch 0 has 1 images, not its 2"):
        score.on_test_batch_end(trainer, module, {"logits": logits[:1]}, None, 0)


def test_eval_scores_imagenet_val_against_real_labels_in_its_test_pass(
    make_cfg, tmp_path: Path
) -> None:
    """A model of 3 ImageNet classes evaluated with real.json: test/real_acc is the share of
    val images (with a set) whose top class is in their set, found by file name."""
    root = tmp_path / "imagenet"
    write_class_tree(root / "train", IMAGENET_WNIDS, per_class=4, suffix=".JPEG")
    palette_of = {}  # val/<wnid>/ILSVRC2012_val_<n>.JPEG, three per class
    for c, wnid in enumerate(IMAGENET_WNIDS):
        for i in range(3):
            number = 1 + 3 * i + c
            palette_of[number] = c
            write_image(root / "val" / wnid / f"ILSVRC2012_val_{number:08d}.JPEG", PALETTE[c])
    labels = [[c] if n % 4 else [] for n, c in sorted(palette_of.items())]  # 4 and 8: none fit
    labels[0] = [IMAGENET.index(IMAGENET_WNIDS[1]), 500]  # image 1: goldfish (or a class unseen)
    real_json = tmp_path / "real.json"
    real_json.write_text(json.dumps(labels))
    data = [
        "data=imagenet",
        f"data.root={root}",
        "data.train_crop=32",
        "data.eval_resize=32",
        "data.eval_crop=32",
        "data.num_workers=0",
    ]
    train(
        make_cfg(
            *QUICK,
            *data,
            "data.batch_size=4",
            "data.augment.preset=none",
            "trainer.max_epochs=3",
            "test=false",
        )
    )
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"

    cfg = make_cfg(
        f"ckpt_path={best}",
        *data,
        f"real_labels={real_json}",
        config_name="eval",
        run_dir=tmp_path / "eval",
    )
    metrics, objects = evaluate(cfg)
    datamodule, net = objects["datamodule"], load_classifier(best).net.eval()
    assert datamodule.on_bad_image == "error"  # a skipped file's place would be the next's
    files = [Path(f).name for f, _ in datamodule.split_samples()["test"]]
    with torch.inference_mode():
        top = torch.cat([net(x).argmax(1) for x, _ in datamodule.eval_batches("test", "cpu")])
    sets = [
        {
            IMAGENET_WNIDS.index(IMAGENET[i])
            for i in labels[int(f[15:23]) - 1]
            if IMAGENET[i] in IMAGENET_WNIDS
        }
        for f in files
    ]
    scored = [(int(t) in s) for t, s in zip(top, sets, strict=True) if s]
    assert len(scored) == 7
    assert metrics["test/real_acc"] == pytest.approx(sum(scored) / len(scored))
    assert metrics["test/real_acc_top5"] == 1.0  # 3 classes: each set is in the top 5


def test_real_labels_on_data_other_than_imagenet_is_one_line(tmp_path: Path) -> None:
    """A folder of classes that are not WordNet ids (data=folder, data=digits) has no ReaL sets."""
    real_json = tmp_path / "real.json"
    real_json.write_text("[[0]]")
    folder = FolderDataModule(root=str(write_class_tree(tmp_path / "pets", ["cat", "dog"], 2)))
    for datamodule in (folder, DigitsDataModule()):
        with pytest.raises(UserError, match="real_labels scores ImageNet's val images"):
            real_labels_score(real_json, datamodule)
    real_json.write_text("{not json")
    with pytest.raises(UserError, match="is not a readable JSON file"):
        read_real_labels(real_json)

"""data/features.py: a linear probe's run (experiment=linear_probe) trains the head on features
computed once (its steps without a device wait, traced as tests/test_device_waits.py does), keeps
them for the next run, scores the k-NN beside it, and leaves checkpoints of the whole net that
eval.py runs on images as any."""

import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from imgcls.data.features import images_fingerprint
from imgcls.data.sources.files import ImageFileDataset
from imgcls.eval import evaluate
from imgcls.models import features as features_module
from imgcls.models.features import FeatureExtractor
from imgcls.models.loading import read_checkpoint
from imgcls.train import train
from tests.data_factory import write_class_tree
from tests.device_waits import StepTrace


def probe(root: Path, cache: Path, *more: str) -> list[str]:
    return [
        "experiment=linear_probe",
        f"data.root={root}",
        "model.net.name=timm/test_vit",
        "model.net.pretrained=false",
        "+model.net.img_size=32",
        "data.eval_resize=32",
        "data.eval_crop=32",
        "data.batch_size=2",  # steps enough for the device-wait trace's windows
        # AdamW reads its step count with .item(): a host tensor on a GPU, not in a CPU trace
        "optimizer=sgd",
        "optimizer.lr=0.05",
        f"model.probe.cache_dir={cache}",
        "logger=csv",
        *more,
    ]


def test_a_probe_run_trains_the_head_on_cached_features(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_class_tree(tmp_path / "photos", ["a", "b", "c"], 8)
    cache = tmp_path / "cache"
    trace = "+callbacks.trace._target_=tests.device_waits.StepTrace"
    metrics, objects = train(make_cfg(*probe(root, cache, "trainer.max_epochs=2", trace)))
    (steps,) = (c for c in objects["callbacks"] if isinstance(c, StepTrace))
    assert steps.steps["train"] >= 5  # the second epoch's steps on features: no device waits
    assert steps.steps["val"] >= 1
    for stage, seen in steps.traces.items():
        assert seen.ops > 50, stage  # the steps' operations were seen
        assert not seen.waits, f"{len(seen.waits)} device waits in {stage} steps: {seen.waits[:3]}"
    # each class one colour: identical features, so every test image's neighbours are its own
    assert metrics["test/knn_acc"] == 1.0
    assert metrics["val/knn_acc"] == 1.0
    assert len(list(cache.glob("*.pt"))) == 3  # train, val, test

    run = tmp_path / "run"
    best = read_checkpoint(run / "checkpoints" / "best.ckpt")["state_dict"]
    net = objects["model"].net
    assert {f"net.{name}" for name in net.state_dict()} <= best.keys()  # the whole net
    assert best["net.head.weight"].abs().sum() > 0  # learned from zeros
    assert all(not p.requires_grad for n, p in net.named_parameters() if not n.startswith("head"))

    # eval.py on best.ckpt: images through the whole net give the probe's own test scores
    evaluated, _ = evaluate(
        make_cfg(
            f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
            "data=folder",
            f"data.root={root}",
            config_name="eval",
            run_dir=tmp_path / "eval",
        )
    )
    for name in ("test/acc", "test/loss"):
        assert evaluated[name] == pytest.approx(metrics[name], abs=1e-5), name

    # resumed in another process (nothing held): the features come from the disk, not the net
    monkeypatch.setattr(features_module, "_HELD", type(features_module._HELD)())

    def no_pass(*args: object) -> None:
        raise AssertionError("features computed again")

    monkeypatch.setattr(FeatureExtractor, "compute", no_pass)
    last = run / "checkpoints" / "last.ckpt"
    quick = ["~callbacks.eval_report", "~callbacks.rich_model_summary"]
    resumed, _ = train(
        make_cfg(*probe(root, cache, "trainer.max_epochs=3", f"ckpt_path={last}", *quick))
    )
    assert read_checkpoint(last)["epoch"] == 2
    assert resumed["test/knn_acc"] == 1.0


def test_the_images_fingerprint_follows_files_and_pixels(tmp_path: Path) -> None:
    root = write_class_tree(tmp_path, ["a", "b"], 2)
    samples = [(str(p), i // 2) for i, p in enumerate(sorted(root.rglob("*.jpg")))]
    before = images_fingerprint(ImageFileDataset(samples))
    assert images_fingerprint(ImageFileDataset(samples)) == before
    assert images_fingerprint(ImageFileDataset(samples[:3])) != before
    relabelled = [(path, 1 - label) for path, label in samples]
    assert images_fingerprint(ImageFileDataset(relabelled)) != before
    os.utime(samples[0][0], ns=(0, 0))  # rewritten since
    assert images_fingerprint(ImageFileDataset(samples)) != before

    pixels = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    held = images_fingerprint(TensorDataset(pixels, torch.tensor([0, 1])))
    pixels[0, 0, 0, 0] = 1
    assert images_fingerprint(TensorDataset(pixels, torch.tensor([0, 1]))) != held
    assert images_fingerprint(torch.utils.data.Dataset()) is None  # nothing to name it by


def test_rows_of_a_hugging_face_dataset_are_named_by_its_own_fingerprint(tmp_path: Path) -> None:
    """data=hf: rows have no files to stat; the datasets library's fingerprint of the image
    column (stable across processes, new when the dataset is rewritten) names them, so a
    probe's features on it are cached as a folder's are."""
    from imgcls.data.sources.hf import HFDataModule
    from tests.data_factory import write_hf_dataset

    def fingerprints(path: Path) -> list[str | None]:
        data = HFDataModule(path=str(path), num_workers=0, artifacts_dir=str(tmp_path / "a"))
        data.setup()
        return [images_fingerprint(data._split(split)) for split in ("train", "val", "test")]

    first = fingerprints(write_hf_dataset(tmp_path / "one"))
    assert None not in first
    assert len(set(first)) == 3
    assert fingerprints(tmp_path / "one" / "hf") == first  # read again: the same names
    assert fingerprints(write_hf_dataset(tmp_path / "two", per_class=11)) != first

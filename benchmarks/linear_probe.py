"""A linear probe on cached features (experiment=linear_probe) against the same probe trained
through its frozen backbone (a backbone pass per step), same photos, net, epochs and settings.

    python benchmarks/linear_probe.py                       # 1,000 photos, vit_tiny, 2 epochs
    python benchmarks/linear_probe.py --epochs 10 --net timm/vit_small_patch16_224

--images is a folder of real photos (default data/imagenet-sample-100, from
../shared/data/imagenet-sample-100.tar: 100 ImageNet photos, one per class), linked over into a
folder of `--samples` photos (data=folder, its seeded 70/20/10 split). The net is randomly
initialized (no download): its cost, not its accuracy, is what is measured (copies of one photo
land in several splits, so no score here means anything). Both runs are whole
`train()` runs (validation every epoch, the test, checkpoints), eval preprocessing (resize 256,
crop 224, `data.augment.preset=none`), on this machine's device:
- cached: `model.probe.enabled=true`; the feature pass (every split, once) is timed apart from
  the rest of the run (its epochs on features, the k-NN, the test);
- through the backbone: `model.probe.enabled=false` with the backbone frozen
  (`callbacks=[default,frozen_backbone]`): each step decodes, crops and runs the backbone.
In that order; a third run repeats the cached one: its features come back from the disk cache.
Prints each wall time and the ratio. On a 2-core AMD EPYC (family 25, model 17; shared, load
about 5), defaults: through the backbone 197 s; cached 109 s (feature pass 104 s, the rest 6 s):
1.8x; the next cached run 6.4 s (31x).
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from imgcls.data.features import FeatureDataModule
from imgcls.models import features as features_module
from imgcls.run.compose import compose_config
from imgcls.train import train


def photo_folder(images: Path, samples: int, root: Path) -> Path:
    """`samples` photos in class folders: the photos of `images` linked over and over."""
    photos = sorted(p for p in images.rglob("*") if p.suffix.lower() in {".jpeg", ".jpg"})
    if not photos:
        raise SystemExit(f"No photos under {images}: extract imagenet-sample-100.tar (docstring)")
    for i in range(samples):
        photo = photos[i % len(photos)]
        target = root / photo.parent.name / f"{i:05d}{photo.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(photo, target)
    return root


def timed_run(overrides: list[str], work: Path, name: str) -> tuple[float, float, dict]:
    """(wall time of the whole train(), of its feature pass, its metrics)."""
    cfg = compose_config("train", overrides, output_dir=work / name)
    spent = {"features": 0.0}
    build = FeatureDataModule.build_splits

    def timed_build(self: FeatureDataModule):
        start = time.perf_counter()
        try:
            return build(self)
        finally:
            spent["features"] += time.perf_counter() - start

    FeatureDataModule.build_splits = timed_build
    features_module._HELD.clear()  # as a new process: nothing held, the disk cache only
    try:
        start = time.perf_counter()
        metrics, _ = train(cfg)
        return time.perf_counter() - start, spent["features"], metrics
    finally:
        FeatureDataModule.build_splits = build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=Path("data/imagenet-sample-100"))
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--net", default="timm/vit_tiny_patch16_224")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = photo_folder(args.images, args.samples, work / "photos")
        common = [
            "experiment=linear_probe",
            f"data.root={root}",
            f"model.net.name={args.net}",
            "model.net.pretrained=false",
            f"data.batch_size={args.batch}",
            f"trainer.max_epochs={args.epochs}",
            f"model.probe.cache_dir={work / 'cache'}",
            f"paths.log_dir={work / 'logs'}",
            "extras.print_config=false",
            "~callbacks.rich_progress_bar",
            "logger=csv",
        ]
        through, _, _ = timed_run(
            [*common, "model.probe.enabled=false", "callbacks=[default,frozen_backbone]"],
            work,
            "through",
        )
        cached, features, _ = timed_run(common, work, "cached")
        again, _, _ = timed_run(common, work, "again")
    print(
        f"\n{args.samples} photos ({args.images}), {args.net} (random init), {args.epochs} "
        f"epochs, batch {args.batch}, {os.cpu_count()} CPUs"
    )
    print(f"cached features:   {cached:7.1f} s  (feature pass {features:.1f} s, the rest "
          f"{cached - features:.1f} s)")  # fmt: skip
    print(f"through backbone:  {through:7.1f} s")
    print(f"next cached run:   {again:7.1f} s  (features read back from the cache)")
    print(f"ratio through / cached: {through / cached:.1f}x; through / next cached run: "
          f"{through / again:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()

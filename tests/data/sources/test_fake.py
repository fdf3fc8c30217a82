"""data/sources/fake.py: synthetic images of any size, channel count and class count: split
sizes, class names, each split's images its own, the same image for the same index."""

import pytest
import torch

from imgcls.data.sources.fake import FakeDataModule


@pytest.mark.parametrize(("size", "classes"), [(32, 10), (224, 1000), (64, 3)])
def test_fake_data_shapes_and_labels(size: int, classes: int) -> None:
    dm = FakeDataModule(num_classes=classes, image_size=size, train_size=6, val_size=3, test_size=3)
    dm.setup()
    assert [len(s) for s in (dm.splits.train, dm.splits.val, dm.splits.test)] == [6, 3, 3]
    image, label = dm.splits.val[0]
    assert image.dtype == torch.uint8
    assert image.shape == (3, size, size)
    assert 0 <= int(label) < classes
    assert dm.num_classes == classes
    # deterministic: the same index gives the same image
    assert torch.equal(dm.splits.val[1][0], dm.splits.val[1][0])
    assert not torch.equal(dm.splits.train[0][0], dm.splits.val[0][0])


def test_split_sizes_channels_and_class_names_are_as_configured() -> None:
    dm = FakeDataModule(
        num_classes=4, image_size=8, channels=1, train_size=12, val_size=5, test_size=7
    )
    dm.setup()
    splits = (dm.splits.train, dm.splits.val, dm.splits.test)
    assert [len(s) for s in splits] == [12, 5, 7]
    assert dm.class_names == ["class_0", "class_1", "class_2", "class_3"]
    for split in splits:
        images, labels = zip(*(split[i] for i in range(len(split))), strict=True)
        assert {image.shape for image in images} == {(1, 8, 8)}
        assert {image.dtype for image in images} == {torch.uint8}
        assert set(map(int, labels)) <= set(range(4))


def test_no_image_appears_in_two_splits() -> None:
    dm = FakeDataModule(image_size=8, train_size=20, val_size=10, test_size=10)
    dm.setup()
    seen = {}
    for name in ("train", "val", "test"):
        split = getattr(dm.splits, name)
        for i in range(len(split)):
            key = split[i][0].numpy().tobytes()
            assert key not in seen, f"{name}[{i}] is also {seen[key]}"
            seen[key] = f"{name}[{i}]"
    assert len(seen) == 40

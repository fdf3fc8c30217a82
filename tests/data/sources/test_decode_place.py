"""data/sources/decode_place.py: where a files or shards source decodes its photos, held to what
the device can do there."""

from pathlib import Path

import pytest

from imgcls.data.sources import decode_place
from imgcls.data.sources.folder import FolderDataModule
from imgcls.utils.errors import UserError
from tests.data_factory import write_class_tree


def test_device_decoding_refuses_presets_it_cannot_crop(tmp_path: Path) -> None:
    root = write_class_tree(tmp_path, ["a", "b"], per_class=4)
    dm = FolderDataModule(root=str(root), decode="device", augment={"preset": "cifar"})
    with pytest.raises(UserError, match=r"preset=cifar.*data\.decode=cpu"):
        dm.setup()


@pytest.mark.parametrize(
    "augment", [{"preset": "cifar"}, {"preset": "standard", "policy": "timm:v0"}]
)
def test_auto_decodes_in_the_workers_what_the_device_cannot_augment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, augment: dict
) -> None:
    """On a GPU with a hardware decoder `auto` picks the device, unless the preset's crop or
    the policy only runs in the workers: then the workers decode, where data.decode=device
    is refused."""
    monkeypatch.setattr(decode_place, "choose_decode", lambda decode, device: "device")
    root = write_class_tree(tmp_path, ["a", "b"], per_class=4)
    assert not FolderDataModule(root=str(root), decode="auto", augment=augment).decodes_on_device()
    assert FolderDataModule(
        root=str(root), decode="auto", augment={"preset": "standard"}
    ).decodes_on_device()

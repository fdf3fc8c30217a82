"""models/features.py: a frozen net's head input, computed once per key and kept (in this
process and on disk), computed anew when the net's weights or the data change."""

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from imgcls.models import features as features_module
from imgcls.models.features import FeatureExtractor, weights_hash
from imgcls.utils.errors import UserError

DATA = {"split": "train", "images": "abc"}


@pytest.fixture(autouse=True)
def nothing_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features_module, "_HELD", type(features_module._HELD)())


def vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_vit", num_classes=3, img_size=32)


def small() -> nn.Module:
    """A backbone (conv, pooling) and its head "3"."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


class Batches:
    """Two batches of images with labels, counting how often they are read."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(6, 3, 32, 32, generator=generator)
        self.labels = torch.tensor([0, 1, 2, 0, 1, 2])
        self.reads = 0

    def __call__(self):
        self.reads += 1
        return [(self.images[:4], self.labels[:4]), (self.images[4:], self.labels[4:])]


def test_features_are_the_heads_input_in_eval_mode(tmp_path: Path) -> None:
    net = vit().train()
    extractor = FeatureExtractor(net, "head", {"name": "timm/test_vit"}, tmp_path)
    batches = Batches()
    features, labels = extractor.features(DATA, batches)
    net.eval()
    with torch.no_grad():
        expected = net.forward_head(net.forward_features(batches.images), pre_logits=True)
        logits = net(batches.images)
    assert torch.allclose(features, expected, atol=1e-5)
    assert torch.allclose(net.head(features), logits, atol=1e-5)
    assert torch.equal(labels, batches.labels)
    assert features.dtype == torch.float32


def test_the_next_run_reads_them_back_until_weights_or_data_change(tmp_path: Path) -> None:
    net, batches = small(), Batches()
    first = FeatureExtractor(net, "3", {"name": "small"}, tmp_path)
    kept, _ = first.features(DATA, batches)
    features_module._HELD.clear()  # another process: only the disk has them
    with torch.no_grad():
        net[3].weight.add_(1.0)  # a new head: the same features
    again, _ = FeatureExtractor(net, "3", {"name": "small"}, tmp_path).features(DATA, batches)
    assert batches.reads == 1
    assert torch.equal(again, kept)
    FeatureExtractor(net, "3", {"name": "small"}, tmp_path).features(
        {**DATA, "images": "abd"}, batches
    )
    assert batches.reads == 2  # other images
    with torch.no_grad():
        net[0].weight.add_(0.1)  # another backbone
    changed, _ = FeatureExtractor(net, "3", {"name": "small"}, tmp_path).features(DATA, batches)
    assert batches.reads == 3
    assert not torch.allclose(changed, kept)
    assert len(list(tmp_path.glob("*.pt"))) == 3
    assert not list(tmp_path.glob(".*"))  # no partial file left


def test_without_a_data_key_or_a_cache_dir_nothing_is_written(tmp_path: Path) -> None:
    net, batches = small(), Batches()
    FeatureExtractor(net, "3", {"name": "n"}, tmp_path).features(None, batches)
    FeatureExtractor(net, "3", {"name": "n"}, tmp_path).features(None, batches)
    assert batches.reads == 2
    assert not list(tmp_path.iterdir())
    FeatureExtractor(net, "3", {"name": "n"}, None).features(DATA, batches)
    FeatureExtractor(net, "3", {"name": "n"}, None).features(DATA, batches)
    assert batches.reads == 3  # held in this process


def test_weights_hash_leaves_the_head_out() -> None:
    net = small()
    before = weights_hash(net, "3")
    with torch.no_grad():
        net[3].bias.add_(1.0)
    assert weights_hash(net, "3") == before
    assert weights_hash(net) != weights_hash(small())  # the head counts where not left out


def test_a_net_that_does_more_after_its_head_is_refused(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3), nn.Softmax(dim=1))
    with pytest.raises(UserError, match="cannot be probed"):
        FeatureExtractor(net, "1", {"name": "x"}, None).features(None, Batches())
    conv = nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(UserError, match="one feature row per image"):
        FeatureExtractor(conv, "0", {"name": "x"}, None).features(None, Batches())

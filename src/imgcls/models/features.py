"""A frozen net's features: what its head receives for each image, computed once and kept.

A linear probe (`model.probe.enabled`) trains the head of a net whose backbone never changes, on
images never augmented: each image's features are the same every epoch, so they are computed
once (a backbone pass per image, not per step) and the head trains on them (data/features.py
serves them as batches). The features are the input of the head layer, caught by a hook, so any
net whose logits are its head of one feature row per image works (timm's, torchvision's ResNets,
ours); one that is not is refused.

They are kept in this process and, with a cache dir, on disk, under a key of everything they
depend on: the net (its config and a hash of the backbone's weights, the head left out: a new
head does not change them) and the data (the caller's part: each split's images and their
preprocessing). The next run with the same key reads them back; a change to any part computes
them anew.
"""

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from imgcls.utils.atomic_save import written_whole
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)
# features held in this process (a sweep's jobs in one process share them), the newest few
_HELD: "OrderedDict[str, tuple[Tensor, Tensor]]" = OrderedDict()
_HELD_MAX = 3


def weights_hash(net: nn.Module, leave_out: str = "") -> str:
    """A hash of every tensor of the net's state dict (names, dtypes, shapes, bytes), the
    entries under `leave_out` (the head) left out."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in net.state_dict().items():
        if leave_out and (name == leave_out or name.startswith(f"{leave_out}.")):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureExtractor:
    """The features of a net's head input, by key. `net_config`: what, beside its weights, makes
    the net compute what it does (its name and options); `cache_dir`: where features are kept
    between runs (None: in this process only)."""

    def __init__(
        self,
        net: nn.Module,
        head_name: str,
        net_config: Mapping[str, Any],
        cache_dir: str | Path | None = None,
    ) -> None:
        self.net, self.head_name = net, head_name
        self.net_config = dict(net_config)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._net_key: dict[str, Any] | None = None

    def net_key(self) -> dict[str, Any]:
        """The net's part of a key, from its weights as they are at the first features asked
        for (a resumed run's are back by then; the backbone never changes after: hashed once)."""
        if self._net_key is None:
            weights = weights_hash(self.net, self.head_name)
            self._net_key = {"net": self.net_config, "weights": weights}
        return self._net_key

    def features(
        self,
        data_key: Mapping[str, Any] | None,
        batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    ) -> tuple[Tensor, Tensor]:
        """(features, labels) of the images `batches()` yields (normalized, un-augmented, on
        the net's device), float32 on the CPU; from the cache where `data_key` is known there
        (None: data that cannot be named, computed every time)."""
        if data_key is None:
            return self.compute(batches())
        key = {**self.net_key(), "data": dict(data_key)}
        name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        if name in _HELD:
            _HELD.move_to_end(name)
            return _HELD[name]
        found = self._read(name, key)
        if found is None:
            found = self.compute(batches())
            self._write(name, key, found)
        _HELD[name] = found
        while len(_HELD) > _HELD_MAX:
            _HELD.popitem(last=False)
        return found

    @torch.no_grad()
    def compute(self, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """One pass of the net in eval mode over the batches, keeping its head's input."""
        head = self.net.get_submodule(self.head_name)
        caught: list[Tensor] = []
        hook = head.register_forward_pre_hook(lambda module, args: caught.append(args[0]))
        training = self.net.training
        self.net.eval()
        features, labels = [], []
        try:
            for images, targets in batches:
                logits = self.net(images)
                rows = caught[-1]
                caught.clear()
                if not features:
                    self._check_head(head, rows, logits)
                features.append(rows.float().cpu())
                labels.append(targets.cpu())
        finally:
            hook.remove()
            self.net.train(training)
        if not features:
            raise UserError("model.probe: a split has no images to compute features of.")
        return torch.cat(features), torch.cat(labels)

    def _check_head(self, head: nn.Module, rows: Tensor, logits: Tensor) -> None:
        """Once per pass: the net's logits are its head of one feature row per image."""
        name = self.net_config.get("name")
        if rows.ndim != 2:
            raise UserError(
                f"model.probe: the head of {name} ({self.head_name}) takes inputs of shape "
                f"{tuple(rows.shape)}, not one feature row per image: probe a net whose head is a "
                "linear layer on pooled features (timm's, torchvision's ResNets)."
            )
        if not torch.allclose(head(rows).float(), logits.float(), rtol=1e-3, atol=1e-3):
            raise UserError(
                f"model.probe: {name}'s logits are not its head ({self.head_name}) applied to that "
                "head's input (the net does more after it): it cannot be probed on features."
            )

    def _path(self, name: str) -> Path:
        return self.cache_dir / f"{name[:32]}.pt"

    def _read(self, name: str, key: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
        if self.cache_dir is None or not self._path(name).is_file():
            return None
        try:
            stored = torch.load(self._path(name), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as err:  # unreadable: computed again
            log.warning(f"Feature cache {self._path(name)} unreadable ({err}): computing anew")
            return None
        if stored.get("key") != json.loads(json.dumps(key, sort_keys=True, default=str)):
            return None
        log.info(f"Features read from {self._path(name)}")
        return stored["features"], stored["labels"]

    def _write(self, name: str, key: dict[str, Any], found: tuple[Tensor, Tensor]) -> None:
        """Written whole: a killed run leaves no half file."""
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self._path(name)
        stored = {
            "key": json.loads(json.dumps(key, sort_keys=True, default=str)),
            "features": found[0],
            "labels": found[1],
        }
        with written_whole(path, shared=True) as staged:  # trials at once may share a key
            torch.save(stored, staged)
        log.info(f"Features of {len(found[0])} images written to {path}")

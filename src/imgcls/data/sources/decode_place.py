"""Where a source whose photos are read encoded each epoch (files, shards) decodes them:
`data.decode` (cpu, device, auto) checked when the source is made, and held to what the device
can do there (the preset's crop, the policy)."""

import torch

from imgcls.data.augmentation.policies import workers_only
from imgcls.data.augmentation.presets import NO_DEVICE_CROP, PRESETS
from imgcls.data.decoding.device import DECODE_PLACES, choose_decode
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)


class DecodePlaceChoice:
    """For a data module whose photos are read encoded each epoch (files, shards): `data.decode`
    checked when it is made, and whether the device it trains on decodes them. Mixed into an
    ImageDataModule (its in_memory, device, pipeline and augment)."""

    def choose_decode_place(self, decode: str) -> None:
        if decode not in DECODE_PLACES:
            raise UserError(f"data.decode={decode!r} is not one of {', '.join(DECODE_PLACES)}.")
        self.decode = decode
        # (device, where decode, auto included, came to on it)
        self._decode_place: tuple[torch.device, str] | None = None

    def decodes_on_device(self) -> bool:
        """data.decode=device, or auto on a GPU with a hardware JPEG decoder, for images read
        encoded each epoch."""
        if self.in_memory or self.decode == "cpu":
            return False
        device = self.device
        if self._decode_place is None or self._decode_place[0] != device:
            place = choose_decode(self.decode, device)
            if place == "device" and self.decode == "auto" and not self._device_can_augment():
                log.info(
                    "data.decode=auto: photos are decoded in the loader workers (data.augment."
                    f"preset={self.augmentation.preset} with policy {self.pipeline.policy} runs "
                    "there)"
                )
                place = "cpu"
            self._decode_place = (device, place)
        on_device = self._decode_place[1] == "device"
        if on_device and self.pipeline.device_crop is NO_DEVICE_CROP:
            able = [
                name for name, make in PRESETS.items() if make().device_crop is not NO_DEVICE_CROP
            ]
            raise UserError(
                f"data.decode=device crops on the device, which data.augment.preset="
                f"{self.augmentation.preset} does "
                f"not: use one of {', '.join(able)}, or data.decode=cpu."
            )
        if on_device and self.pipeline.policy and self.pipeline.device_policy is None:
            raise workers_only(self.pipeline.policy)
        return on_device

    def _device_can_augment(self) -> bool:
        """Whether the device can do the workers' part: the preset's crop and the policy."""
        pipeline = self.pipeline
        no_policy = pipeline.policy is None or pipeline.device_policy is not None
        return pipeline.device_crop is not NO_DEVICE_CROP and no_policy

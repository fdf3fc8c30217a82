"""What this process runs on: the CPUs it may use, and getting small host values to its device."""

import os

import torch
from torch import Tensor


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def to_device_async(
    values: Tensor | list, device: torch.device, dtype: torch.dtype | None = None
) -> Tensor:
    """Host values (an epoch's order, image sizes, indices) on `device` without the host
    waiting for it: a CUDA copy from pinned memory, queued behind the device's work (torch keeps
    the pinned buffer until the copy is done). A plain tensor elsewhere. Made contiguous first:
    a strided pinned tensor would be copied through a pageable temporary."""
    tensor = values if isinstance(values, Tensor) else torch.tensor(values, dtype=dtype)
    tensor = tensor.contiguous()
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class DeviceConstants:
    """Small host-made tensors a batched op needs on whatever device its batch is on (a colour
    matrix, a lookup table): copied to each (device, dtype) once, at first use. A copy from the
    host in every step would make the host wait for the device."""

    def __init__(self, *tensors: Tensor) -> None:
        self.host = tensors
        self._copies: dict[tuple[torch.device, torch.dtype | None], tuple[Tensor, ...]] = {}

    def on(self, device: torch.device, dtype: torch.dtype | None = None) -> tuple[Tensor, ...]:
        """The tensors on `device`, in `dtype` (None: each its own)."""
        key = (device, dtype)
        if key not in self._copies:
            self._copies[key] = tuple(t.to(device, dtype or t.dtype) for t in self.host)
        return self._copies[key]

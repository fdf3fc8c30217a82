"""utils/machine.py: the CPUs this process may use; host values on a device without a wait;
constants copied to each (device, dtype) once."""

import os

import pytest
import torch

from imgcls.utils.machine import DeviceConstants, available_cpus, to_device_async

CPU, META = torch.device("cpu"), torch.device("meta")


def test_available_cpus_are_this_process_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    assert available_cpus() == len(os.sched_getaffinity(0)) >= 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3})  # taskset -c 0,3
    assert available_cpus() == 2
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS: no affinity, every core
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert available_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert available_cpus() == 1


def test_to_device_async_gives_the_same_values_on_the_cpu() -> None:
    order = to_device_async([3, 1, 2], CPU, dtype=torch.long)
    assert order.dtype == torch.long
    assert order.tolist() == [3, 1, 2]
    sizes = to_device_async([[32, 40], [28, 28]], CPU, dtype=torch.int32)
    assert (sizes.dtype, sizes.tolist()) == (torch.int32, [[32, 40], [28, 28]])
    assert to_device_async([0.5, 1.5], CPU).dtype == torch.get_default_dtype()


def test_a_strided_tensor_arrives_contiguous_with_its_values() -> None:
    host = torch.arange(12).reshape(3, 4).t()  # a transposed view: not contiguous
    assert not host.is_contiguous()
    moved = to_device_async(host, CPU)
    assert moved.is_contiguous()
    assert torch.equal(moved, host)
    assert moved.device == CPU


def test_device_constants_are_copied_once_per_device_and_dtype() -> None:
    matrix, table = torch.rand(3, 3), torch.arange(256, dtype=torch.uint8)
    constants = DeviceConstants(matrix, table)
    on_meta = constants.on(META)  # a device of its own: each call would make new tensors
    assert [t.device for t in on_meta] == [META, META]
    assert [t.dtype for t in on_meta] == [torch.float32, torch.uint8]  # each its own dtype
    again = constants.on(META)
    assert all(a is b for a, b in zip(again, on_meta, strict=True))  # the same tensors

    doubles = constants.on(CPU, torch.float64)
    assert [t.dtype for t in doubles] == [torch.float64, torch.float64]
    assert torch.equal(doubles[0], matrix.double())
    assert torch.equal(doubles[1], table.double())
    assert all(a is b for a, b in zip(constants.on(CPU, torch.float64), doubles, strict=True))
    assert constants.on(CPU)[0] is not doubles[0]  # another dtype: another copy
    assert torch.equal(constants.on(CPU)[0], matrix)

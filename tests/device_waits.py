"""What a CUDA device would wait on, seen on a CPU: a trace of every tensor operation, at the
level of torch's dispatcher, over a window of training or evaluation steps.

On a GPU the host queues work and runs ahead; anything that needs a value, or a size that
depends on values, makes it wait for the queue to drain. Python-side reads (`.item()`, `if
tensor:`) are only part of it: many waits happen inside C++ (`nonzero`, boolean-mask indexing,
`bincount`'s min/max, linalg's error checks), and some only exist on CUDA (a Python number made
a device tensor is a blocking copy from pageable memory). The same code paths run on a CPU, so
a trace there names them all:

- ops that synchronize on CUDA (`SYNC_OPS`, boolean-mask indexing, `repeat_interleave` without
  `output_size`), recorded at the dispatcher, where C++ callers are seen too;
- Python reads that copy a tensor to the host without a dispatched op on a CPU (`tolist`,
  `numpy`, `cpu`);
- host-made data on its way to the device inside a step: a tensor built from Python values with
  a `device` (`torch.tensor(values, device=d)`, `torch.as_tensor(n, device=d)`: on CUDA a
  blocking pageable copy), and `.to(device)` / `.copy_` of a tensor made on the host in the
  window that does not go through `imgcls.utils.machine.to_device_async` (pinned, queued).

Tensors made on the host inside the window (built from Python values, or by a factory given no
device) and everything computed only from them are host tensors: reading them waits for nothing,
as with torchvision MixUp's mixing weight; one used among device tensors (an index list, say) is
a copy to the device. Everything else counts as being on the device.
"""

import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

# aten ops that make the host wait for the device on CUDA, and why
SYNC_OPS = {
    "_local_scalar_dense": "reads a value to the host (item(), bool(), float(), int())",
    "nonzero": "output size depends on the values",
    "masked_select": "output size depends on the values",
    "_unique": "output size depends on the values",
    "_unique2": "output size depends on the values",
    "unique_dim": "output size depends on the values",
    "unique_consecutive": "output size depends on the values",
    "unique_dim_consecutive": "output size depends on the values",
    "bincount": "reads min/max of its input to size the output",
    "histc": "reads min/max of its input when no range is given",
    "_linalg_check_errors": "reads linalg's error info to raise on a singular matrix",
    "is_nonzero": "reads a value to the host",
    "_assert_async": "a device-side assert (synchronizes under CUDA's debug checks)",
    "equal": "reads its result to the host",
}
# Python-level reads that dispatch nothing on a CPU (on CUDA each is a device-to-host copy)
PYTHON_READS = ("tolist", "numpy", "cpu", "__array__")
# constructors from Python data, and factories: a host tensor when given no device
FROM_DATA = ("tensor", "as_tensor", "asarray", "from_numpy", "frombuffer")
FACTORIES = (
    "zeros",
    "ones",
    "empty",
    "full",
    "arange",
    "rand",
    "randn",
    "randint",
    "randperm",
    "linspace",
    "logspace",
    "eye",
    "empty_strided",
)
HOST_SIDE = {getattr(torch, name) for name in (*FROM_DATA, *FACTORIES)}
# calls whose value checks read back to the host on a CPU only (on CUDA the kernel asserts)
CPU_ONLY_CHECKS = {torch.nn.functional.one_hot: "one_hot with num_classes"}
# the one sanctioned path of host values to the device: pinned, then a queued copy
SANCTIONED = ("to_device_async",)
# a DataLoader's batches are pinned on CUDA by the loader (pin_memory) and moved by Lightning
LOADER_FILES = ("torch/utils/data/",)


@dataclass
class Wait:
    """One operation a CUDA device would make the host wait on."""

    what: str
    why: str
    where: str

    def __str__(self) -> str:
        return f"{self.what}: {self.why}\n{self.where}"


def _short_stack(limit: int = 8) -> str:
    frames = [
        f
        for f in traceback.extract_stack()[:-3]
        if "torch/utils/_python_dispatch" not in f.filename
        and "torch/overrides" not in f.filename
        and f.filename != __file__
    ]
    return "".join(traceback.format_list(frames[-limit:]))


def _in_frames(names: Iterable[str], files: Iterable[str] = ()) -> bool:
    frame = sys._getframe(2)
    names, files = tuple(names), tuple(files)
    while frame is not None:
        code = frame.f_code
        if code.co_name in names or any(f in code.co_filename for f in files):
            return True
        frame = frame.f_back
    return False


def _tensors(values: Any) -> list[torch.Tensor]:
    flat, _ = tree_flatten(values)
    return [v for v in flat if isinstance(v, torch.Tensor)]


def _num_classes_given(args: tuple, kwargs: dict) -> bool:
    return kwargs.get("num_classes", args[1] if len(args) > 1 else -1) >= 0


def _targets_a_device(args: tuple, kwargs: dict) -> bool:
    """Whether a `.to(...)` / `.cuda()` / `.copy_()` call names a device (or a tensor whose
    device it takes), rather than only a dtype."""
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, torch.device | str | torch.Tensor) for a in args)


@dataclass
class DeviceWaitTrace:
    """The dispatch and function modes that record `Wait`s while active (`with trace:`)."""

    waits: list[Wait] = field(default_factory=list)
    ops: int = 0

    def __post_init__(self) -> None:
        self.host = WeakIdKeyDictionary()  # tensors made on the host in the window
        self.cpu_only_checks = 0  # inside a call whose reads happen on a CPU only
        self._modes: list[Any] = []

    def is_host(self, tensor: torch.Tensor) -> bool:
        return tensor in self.host

    def record(self, what: str, why: str) -> None:
        self.waits.append(Wait(what, why, _short_stack()))

    def __enter__(self) -> "DeviceWaitTrace":
        self._modes = [_FunctionLevel(self), _DispatchLevel(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []


class _FunctionLevel(TorchFunctionMode):
    """Python API calls: constructors, moves to the device, Python-side reads."""

    def __init__(self, trace: DeviceWaitTrace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        trace = self.trace
        name = getattr(func, "__name__", str(func))
        source = _moved_to_device(func, args, kwargs)
        if (
            source is not None
            and trace.is_host(source)
            and not source.is_pinned()
            and not _in_frames(SANCTIONED)
        ):
            trace.record(f"{name}(..., device)", "host tensor copied to the device unpinned")
        read = args[0] if name in PYTHON_READS and args else None
        if isinstance(read, torch.Tensor) and not trace.is_host(read):
            trace.record(f"Tensor.{name}", "copies a device tensor to the host")
        made_with_device = func in HOST_SIDE and kwargs.get("device") is not None
        from_data = name in FROM_DATA and args and not isinstance(args[0], torch.Tensor)
        if made_with_device and from_data:
            trace.record(f"torch.{name}(..., device=...)", "Python values copied to the device")
        checks_on_cpu_only = func in CPU_ONLY_CHECKS and _num_classes_given(args, kwargs)
        trace.cpu_only_checks += checks_on_cpu_only
        try:
            result = func(*args, **kwargs)
        finally:
            trace.cpu_only_checks -= checks_on_cpu_only
        if func in HOST_SIDE and not made_with_device and not _in_frames((), LOADER_FILES):
            for tensor in _tensors(result):
                trace.host[tensor] = True
        elif source is not None or made_with_device:
            for tensor in _tensors(result):  # on the device now (a CPU returns the same one)
                trace.host.pop(tensor, None)
        return result


def _moved_to_device(func, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tensor a call copies onto a device, if it is one that does."""
    if func in (torch.Tensor.to, torch.Tensor.cuda) and _targets_a_device(args[1:], kwargs):
        return args[0]
    if func is torch.Tensor.copy_ and len(args) > 1:
        return args[1]
    if func in (torch.as_tensor, torch.asarray) and kwargs.get("device") is not None:
        return args[0] if args and isinstance(args[0], torch.Tensor) else None
    return None


class _DispatchLevel(TorchDispatchMode):
    """aten ops, as every caller reaches them, C++ included."""

    def __init__(self, trace: DeviceWaitTrace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        trace = self.trace
        trace.ops += 1
        inputs = _tensors((args, kwargs))
        host = [t for t in inputs if trace.is_host(t)]
        on_host = bool(inputs) and len(host) == len(inputs)
        cpu_only = trace.cpu_only_checks and func is torch.ops.aten._local_scalar_dense.default
        if not on_host and not cpu_only:
            why = self._why_it_waits(func, args, kwargs)
            if why:
                trace.record(f"aten.{func.overloadpacket.__name__}", why)
            if any(t.ndim > 0 for t in host):  # a CPU scalar is read as a number: no copy
                trace.record(
                    f"aten.{func.overloadpacket.__name__}",
                    "a host tensor among device tensors: copied to the device (blocking)",
                )
        result = func(*args, **kwargs)
        made_from_data = func is torch.ops.aten.lift_fresh.default
        if made_from_data and _in_frames((), LOADER_FILES):  # the loader pins its batches
            made_from_data = False
        for tensor in _tensors(result):
            if on_host or made_from_data:
                trace.host[tensor] = True
            else:
                trace.host.pop(tensor, None)  # in-place ops on a host tensor with device inputs
        return result

    @staticmethod
    def _why_it_waits(func, args: tuple, kwargs: dict) -> str | None:
        packet = func.overloadpacket.__name__
        if packet in SYNC_OPS:
            return SYNC_OPS[packet]
        if packet in ("index", "index_put", "index_put_", "_index_put_impl_"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                for i in indices or ()
            ):
                return "boolean-mask indexing: output size depends on the values"
        # repeats as a tensor (other overloads decompose into this one)
        if func is torch.ops.aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            return "repeat_interleave without output_size reads the repeats' sum"
        return None


def host_held_tensors(trainer: L.Trainer) -> list[torch.Tensor]:
    """Tensors made on the host before the window that stay there: the parameters of the Beta
    distribution torchvision's MixUp and CutMix draw their mixing weight from (on a GPU too)."""
    device_batch = getattr(trainer.datamodule, "device_batch", None)
    mix = getattr(device_batch, "mix", None)
    found = []
    for transform in getattr(mix, "transforms", [mix]):
        dist = getattr(transform, "_dist", None)
        for part in (dist, getattr(dist, "_dirichlet", None)):
            found += [v for v in vars(part).values() if isinstance(v, torch.Tensor)] if part else []
    return found


class StepWindows(L.Callback):
    """Opens and closes a window over steps in a steady state: in epoch `epoch` (the second, so
    the first epoch's end-of-epoch logging has happened), training steps from the end of batch
    `first` to the end of batch `last` (fetching, transfer, the device side of the batch, the
    step, every callback), and validation batches from the end of the first to the end of batch
    `last_val` of that epoch's validation. The epochs' ends, where values are read once, are
    outside. Subclasses say what a window does (`open`, `close`)."""

    def __init__(self, epoch: int = 1, first: int = 1, last: int = 11, last_val: int = 3) -> None:
        self.epoch, self.first, self.last, self.last_val = epoch, first, last, last_val
        self.steps = {"train": 0, "val": 0}  # batches inside the windows
        self._open: str | None = None

    def open(self, stage: str, trainer: L.Trainer) -> None:
        raise NotImplementedError

    def close(self, stage: str) -> None:
        raise NotImplementedError

    def _batch_end(self, stage: str, trainer: L.Trainer, batch_idx: int, batches: int) -> None:
        if trainer.current_epoch != self.epoch or trainer.sanity_checking:
            return
        last = min(self.last if stage == "train" else self.last_val, batches - 1)
        first = self.first if stage == "train" else 0
        if self._open is None and batch_idx == first and first < last:
            self._open = stage
            self.open(stage, trainer)
        elif self._open == stage:
            self.steps[stage] += 1
            if batch_idx == last:
                self._shut()

    def _shut(self) -> None:
        if self._open is not None:
            self.close(self._open)
            self._open = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._batch_end("train", trainer, args[3], trainer.num_training_batches)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._batch_end("val", trainer, args[3], trainer.num_val_batches[0])

    def teardown(self, *args: Any, **kwargs: Any) -> None:
        self._shut()


class StepTrace(StepWindows):
    """A DeviceWaitTrace over each window: `train` and `val`."""

    def __init__(self, **window: int) -> None:
        super().__init__(**window)
        self.traces = {"train": DeviceWaitTrace(), "val": DeviceWaitTrace()}

    def open(self, stage: str, trainer: L.Trainer) -> None:
        trace = self.traces[stage].__enter__()
        for tensor in host_held_tensors(trainer):
            trace.host[tensor] = True

    def close(self, stage: str) -> None:
        self.traces[stage].__exit__(None, None, None)

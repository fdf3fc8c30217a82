"""A run's profiler when it profiles nothing: cheaper than Lightning's own no-op.

Lightning wraps every hook call (each callback's, the module's, the strategy's: about 90 a
training step with the default callbacks) in `trainer.profiler.profile(name)`. Its no-op
profiler still makes a generator context manager for each, about 1 us apiece: some 80 us a
step, a few percent of a small net's step on a GPU or a CPU. Here each call gets one shared,
reusable null context instead. `trainer.profiler=simple` (advanced, pytorch) times the hooks.
"""

import contextlib
from contextlib import AbstractContextManager

from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING = contextlib.nullcontext()


class NoProfiler(PassThroughProfiler):
    def profile(self, action_name: str) -> AbstractContextManager:
        return _NOTHING

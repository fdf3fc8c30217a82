"""Checkpoints written by earlier versions, read as today's model expects them: a compiled
LightningModule's or net's `_orig_mod.` keys, the task's state once kept by the module itself
(now under `objective.`; what today's objective of that task no longer has, such as the
temperature every task once carried, dropped), and the bests or fitted values an older
checkpoint did not keep (taken as a fresh model has them). The raw weights of an EMA checkpoint
(`current_model_state`, what a resumed fit continues from) alike."""

from typing import Any

from torch import nn

# what the module itself held of its task before the objectives had their own room
OLD_TASK_STATE = ("temperature", "thresholds", "criterion.", "val_")


def migrate(checkpoint: dict[str, Any], objective: nn.Module, kept: tuple[str, ...]) -> None:
    """In place. `objective`: the model's (under `objective.`); `kept`: the names of its state
    an older checkpoint may lack, defaulted to the fresh model's."""
    fresh = objective.state_dict(prefix="objective.")
    for key in ("state_dict", "current_model_state"):
        state = checkpoint.get(key)
        if state is None:
            continue
        for old in [k for k in state if "_orig_mod." in k]:
            state[old.replace("_orig_mod.", "")] = state.pop(old)
        for name in fresh:
            bare = name.removeprefix("objective.")
            if name not in state and bare in state:
                state[name] = state.pop(bare)
        for old in [k for k in state if k.startswith(OLD_TASK_STATE)]:
            del state[old]  # the old layout's, which today's objective of this task lacks
        for name, value in fresh.items():
            if name.removeprefix("objective.").startswith(kept):
                state.setdefault(name, value)

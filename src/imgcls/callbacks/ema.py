"""Lightning's EMAWeightAveraging, with the test that follows training on the averaged weights.

Checkpoints hold the averaged weights as `state_dict` (what eval, predict and export load) and the
raw ones as `current_model_state` (what a resumed fit continues from). Lightning keeps its averaged
model after fit, so when the same trainer then tests the best checkpoint, its hook loads
`current_model_state`: train's test/acc would be the raw weights' and eval.py's the averaged
ones'. Outside fitting the checkpoint's `state_dict` is left in place.
"""

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMA(EMAWeightAveraging):
    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

"""Fine-tuning in two phases, on Lightning's BaseFinetuning: the head trains alone, then, from
`unfreeze_at_epoch` on (None: never), the whole net.

A frozen backbone neither learns nor moves its BatchNorm statistics: its BatchNorm layers stay
in eval mode, as torchvision's FrozenBatchNorm (Lightning's own freeze would normalize with each
batch's statistics instead). Its parameters stay in the optimizer's groups, without gradients,
so the LR schedule covers them from the start and unfreezing adds no param group. Parameters a
net keeps fixed by design (fast_cifar's whitening stem, a LoRA run's backbone: models/lora.py)
stay fixed: with LoRA the head trains alone, then the adapters join it.

`'callbacks=[default,frozen_backbone]' callbacks.frozen_backbone.unfreeze_at_epoch=3`
"""

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)


class FrozenBackbone(BaseFinetuning):
    def __init__(self, unfreeze_at_epoch: int | None = None) -> None:
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.frozen = False
        self._params: list[nn.Parameter] = []
        self._norms: list[nn.Module] = []
        self._after_validation = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.unfreeze_at_epoch is not None and trainer.world_size > 1:
            # DDP registers the parameters to sync once, at wrap time, frozen ones excluded.
            raise UserError(
                "callbacks.frozen_backbone.unfreeze_at_epoch does not work across devices (DDP "
                "syncs only the parameters trainable at the start). Train the frozen phase, then "
                "start the unfrozen one from its checkpoint: model.net.weights_path=<best.ckpt>."
            )
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        if not self._params:  # once: later stages find the backbone frozen already
            head = {id(p) for p in pl_module.head.parameters()}
            net = pl_module.net
            self._params = [p for p in net.parameters() if p.requires_grad and id(p) not in head]
            head_modules = set(pl_module.head.modules())
            self._norms = [
                m
                for m in net.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in head_modules
            ]
        self._set_frozen(True)

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if self.frozen and self.unfreeze_at_epoch is not None and epoch >= self.unfreeze_at_epoch:
            log.info(f"Epoch {epoch}: unfreezing the backbone")
            self._set_frozen(False)

    def _set_frozen(self, frozen: bool) -> None:
        for param in self._params:
            param.requires_grad_(not frozen)
        self.frozen = frozen
        for norm in self._norms:  # unfrozen: training again, statistics moving
            norm.train(not frozen)

    def _hold_norms(self) -> None:
        if self.frozen:
            for norm in self._norms:
                norm.eval()

    # Lightning puts the whole module in train mode at each epoch start and after validation.
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._hold_norms()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._after_validation = True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *_: object
    ) -> None:
        if self._after_validation:  # a validation inside the epoch switched train mode back on
            self._after_validation = False
            self._hold_norms()

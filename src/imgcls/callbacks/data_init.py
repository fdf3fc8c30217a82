"""Data-dependent initialization: a net with an `init_from_data(images)` method (fast_cifar's
patch-whitening stem) gets it called with the first training images before the first step.

Runs only for a fresh run from scratch: a resumed run or pretrained weights already set those
layers. The sample is the first images in split order, un-augmented and normalized, so every
device computes the same weights; they are broadcast from rank 0 all the same (as CPU tensors),
as DDP syncs parameters only when it wraps the model, before this hook.
"""

import lightning as L
from lightning.pytorch.callbacks import Callback

from imgcls.models.loading import PRETRAINED_KEYS
from imgcls.utils.logging import get_logger

log = get_logger(__name__)


class DataDependentInit(Callback):
    def __init__(self, num_images: int = 5000) -> None:
        self.num_images = num_images

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = getattr(pl_module, "net", None)
        datamodule = trainer.datamodule
        if not hasattr(net, "init_from_data") or not hasattr(datamodule, "first_train_images"):
            return
        net_cfg = pl_module.hparams.get("net", {})
        pretrained = any(net_cfg.get(key) for key in PRETRAINED_KEYS)
        if trainer.ckpt_path or pretrained:
            return
        images = datamodule.first_train_images(self.num_images, pl_module.device)
        net.init_from_data(images)
        if trainer.world_size > 1:
            # CPU tensors: a pickled CUDA tensor is unpickled onto the device it left, so every
            # rank would make a context and allocations on rank 0's GPU
            state = {name: t.cpu() for name, t in net.state_dict().items()}
            net.load_state_dict(trainer.strategy.broadcast(state))
        log.info(f"{type(net).__name__}: initialized from {len(images)} training images")

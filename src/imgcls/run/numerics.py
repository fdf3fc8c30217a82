"""How torch does a run's arithmetic: float32 matmul precision and deterministic kernels.

`float32_matmul_precision` (train.yaml, eval.yaml) is applied before anything is built, so it is
recorded with the run's config. `high` lets CUDA run float32 matmuls on tensor cores (TF32, a
10-bit mantissa: several times faster on Ampere and later GPUs, with no measurable effect on the
accuracy of image classifiers, which is why torchvision's and timm's training scripts enable it
too); convolutions already use TF32 by torch's default. On a CPU `high` computes as `highest`.

`trainer.deterministic=true` picks deterministic kernels everywhere, and torch refuses the few
CUDA ops that have none: `nondeterministic_ops_explained` says so in one line.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from omegaconf import DictConfig

from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)
MATMUL_PRECISIONS = ("highest", "high", "medium")


def configure_numerics(cfg: DictConfig) -> None:
    precision = cfg.get("float32_matmul_precision")
    if precision is not None:
        if precision not in MATMUL_PRECISIONS:
            allowed = ", ".join(MATMUL_PRECISIONS)
            raise UserError(f"float32_matmul_precision={precision!r} is not one of {allowed}.")
        torch.set_float32_matmul_precision(precision)


@contextmanager
def nondeterministic_ops_explained() -> Iterator[None]:
    """Turn torch's refusal of an op without a deterministic kernel into one line that says
    what to do."""
    try:
        yield
    except RuntimeError as err:
        found = re.search(r"(\S+) does not have a deterministic implementation", str(err))
        if found is None:
            raise
        raise UserError(
            f"{found.group(1)} has no deterministic kernel, and trainer.deterministic=true refuses "
            "it. Use trainer.deterministic=warn to run it anyway (the run is then not "
            "bit-reproducible on this device), or a net without that op."
        ) from err

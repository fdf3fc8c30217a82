"""imgcls: an image-classification research template on PyTorch Lightning + Hydra."""

import os
from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"

# configs/paths use ${oc.env:PROJECT_ROOT}; a user may point it elsewhere, otherwise it is the
# checkout this package runs from, wherever the command was started.
os.environ.setdefault("PROJECT_ROOT", str(REPO_ROOT))

# `${unique_dir:...}` names each run's dir (configs/hydra): registered wherever configs are composed
from imgcls.utils.run_dirs import register_resolvers  # noqa: E402

register_resolvers()

"""imgcls: an image-classification research template on PyTorch Lightning + Hydra.

Importing it does nothing but name where the checkout and its configs are: the resolvers the
configs use are registered by whatever composes one (imgcls/run/resolvers.py).
"""

from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"

"""Running the user-facing commands in a subprocess."""

import os
import subprocess
import sys
from collections.abc import Sequence

from imgcls import REPO_ROOT


def run_cli(script: str, args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python <script> args...` from the repo root, as a user would."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

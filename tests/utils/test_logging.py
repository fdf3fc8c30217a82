"""utils/logging.py: a run's log speaks once, from rank 0, not once per DDP process."""

import logging

import pytest
from lightning.pytorch.utilities import rank_zero_only

from imgcls.utils.logging import get_logger


def test_only_rank_zero_logs(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    log = get_logger("imgcls.test_logging")
    with caplog.at_level(logging.INFO, logger="imgcls.test_logging"):
        monkeypatch.setattr(rank_zero_only, "rank", 1)
        log.info("from rank 1")
        monkeypatch.setattr(rank_zero_only, "rank", 0)
        log.warning("from rank 0")
    assert [r.getMessage() for r in caplog.records] == ["from rank 0"]

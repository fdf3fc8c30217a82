"""Logging that speaks once per run, not once per DDP process."""

import logging

from lightning.pytorch.utilities import rank_zero_only


class RankZeroLogger(logging.LoggerAdapter):
    """Drops records on every rank but zero, so N processes do not print N copies."""

    def log(self, level: int, msg: object, *args: object, **kwargs: object) -> None:
        if rank_zero_only.rank == 0:
            super().log(level, msg, *args, **kwargs)


def get_logger(name: str) -> logging.LoggerAdapter:
    return RankZeroLogger(logging.getLogger(name), {})

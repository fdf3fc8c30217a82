"""Paired, rotated repeats: how every benchmark here turns timings into a ratio it can stand by.

A machine's speed drifts (turbo, a neighbour's job, the page cache): timing one contender for all
its repeats and then the other measures the drift as much as the code. So each repeat runs every
contender once, in an order rotated by one per repeat (none always goes first, or last), and a
ratio is taken within each repeat, where both ran moments apart; the median of those is printed
with its spread, so a reader sees at once whether the figure is a finding or noise.
"""

import statistics
from collections.abc import Callable


def paired_repeats(
    contenders: dict[str, Callable[[], float]], repeats: int
) -> dict[str, list[float]]:
    """Each contender's figure (a rate: higher is faster) per repeat, in rotating order."""
    names = list(contenders)
    figures: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        turn = repeat % len(names)
        for name in names[turn:] + names[:turn]:
            figures[name].append(contenders[name]())
    return figures


def span(values: list[float], digits: int = 0) -> str:
    """How far repeats wandered: 'min-max over n', or 'one run'."""
    if len(values) == 1:
        return "one run"
    return f"{min(values):,.{digits}f}-{max(values):,.{digits}f} over {len(values)}"


def spread(values: list[float], digits: int = 0) -> str:
    """'median (min-max over n)': the figure and how far its repeats wandered."""
    return f"{statistics.median(values):,.{digits}f} ({span(values, digits)})"


def ratio_line(label: str, ours: list[float], baseline: list[float], digits: int = 3) -> str:
    """`ratio <label>=<median>` of the per-repeat ratios of two rate lists from
    `paired_repeats`, then their spread and each of them (gpu_check.py reads the median)."""
    ratios = [o / b for o, b in zip(ours, baseline, strict=True)]
    listed = ", ".join(f"{r:.{digits}f}" for r in ratios)
    median = statistics.median(ratios)
    return f"ratio {label}={median:.{digits}f}  ({span(ratios, digits)}; paired: {listed})"

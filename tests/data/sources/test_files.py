"""data/sources/files.py: seeded stratified splits, however small the classes."""

from collections import Counter

import pytest

from imgcls.data.sources.files import stratified_split


def test_stratified_split_proportions_per_class() -> None:
    labels = [0] * 10 + [1] * 30
    train, val, test = stratified_split(labels, [0.7, 0.2, 0.1], seed=0)
    assert sorted(train + val + test) == list(range(40))
    assert Counter(labels[i] for i in val) == {0: 2, 1: 6}
    assert Counter(labels[i] for i in test) == {0: 1, 1: 3}


@pytest.mark.parametrize("per_class", [[3, 5], [4, 4], [2, 2, 2], [1, 1, 2, 2]])
def test_every_split_asked_for_gets_images_however_small_the_classes(per_class) -> None:
    """Rounding each class's share of 10% down to 0 must not leave the test split empty."""
    labels = [c for c, n in enumerate(per_class) for _ in range(n)]
    parts = stratified_split(labels, [0.7, 0.2, 0.1], seed=0)
    assert all(parts), [len(p) for p in parts]
    assert sorted(i for part in parts for i in part) == list(range(len(labels)))
    assert parts == stratified_split(labels, [0.7, 0.2, 0.1], seed=0)  # reproducible
    assert not stratified_split(labels, [0.8, 0.2, 0.0], seed=0)[2]  # none asked, none given
    # a class is never taken out of training whole
    assert {labels[i] for i in parts[0]} == set(labels)

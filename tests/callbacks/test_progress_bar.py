"""callbacks/progress_bar.py: the bar takes Lightning's `refresh_rate` as the number of
training batches between redraws, and always shows each epoch's last batch; 0 is no bar."""

import pytest

from imgcls.callbacks.progress_bar import ProgressBar
from tests.callbacks.tiny import TinyClassifier, loader, tiny_trainer


@pytest.mark.parametrize(
    ("rate", "redrawn"), [(3, [3, 6, 7, 3, 6, 7]), (1, list(range(1, 8)) * 2), (0, [])]
)
def test_the_bar_is_redrawn_every_refresh_rate_batches_and_at_each_epochs_end(
    monkeypatch: pytest.MonkeyPatch, rate: int, redrawn: list[int]
) -> None:
    bar, shown = ProgressBar(refresh_rate=rate), []
    update = ProgressBar._update

    def recorded(self: ProgressBar, task: object, current: int, **kwargs: bool) -> None:
        if task is not None and task == self.train_progress_bar_id:
            shown.append(current)
        update(self, task, current, **kwargs)

    monkeypatch.setattr(ProgressBar, "_update", recorded)
    trainer = tiny_trainer(
        callbacks=[bar], enable_progress_bar=True, max_epochs=2, limit_train_batches=7
    )
    trainer.fit(TinyClassifier(), loader(images=14))
    assert shown == redrawn

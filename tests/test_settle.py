"""settle.py: the values a run derives are written into its config once, before use."""

import pytest

from imgcls.settle import settle


@pytest.mark.usefixtures("fake_cifar_integrity")
def test_settled_values_are_written_once_and_the_config_is_then_final(make_cfg) -> None:
    cfg = make_cfg(
        "experiment=cifar10_fast", "trainer.deterministic=true", "trainer.benchmark=true"
    )
    settled = settle(cfg)
    assert settled == {
        "trainer.benchmark": False,
        "optimizer.lr": pytest.approx(1.5),  # 0.375 per 256 images, at batch 1024
        "optimizer.imgcls.scale_lr": None,
    }
    assert cfg.optimizer.lr == pytest.approx(1.5)
    assert not cfg.trainer.benchmark
    assert settle(cfg) == {}  # nothing left to derive: what the run logs is what it used

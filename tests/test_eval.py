"""eval.py: a checkpoint evaluated on the test split, preprocessed as it was trained; a wrong
checkpoint or data config said in one line."""

from pathlib import Path

import pytest

from imgcls.eval import evaluate
from imgcls.train import train
from imgcls.utils.errors import UserError

# A small fast net so these tests take seconds, not minutes.
QUICK = ["model=cifar_quick", "optimizer.lr=0.05"]
FOUR_BATCHES = "+trainer.limit_train_batches=4"


def test_eval_rejects_checkpoint_for_other_classes(make_cfg, tmp_path: Path) -> None:
    train(make_cfg(*QUICK, FOUR_BATCHES, "trainer.max_epochs=1", "test=false"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg = make_cfg(f"ckpt_path={last}", "data=fake", "data.num_classes=7", config_name="eval")
    with pytest.raises(UserError, match="7 classes the model has no class for"):
        evaluate(cfg)


def test_eval_without_checkpoint_says_what_to_pass(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ckpt_path="):
        evaluate(make_cfg(config_name="eval"))
    with pytest.raises(UserError, match="No checkpoint at"):
        evaluate(make_cfg(f"ckpt_path={tmp_path}/nope.ckpt", config_name="eval"))


def test_eval_preprocesses_as_the_checkpoint_was_trained(make_cfg, tmp_path: Path) -> None:
    """A run normalized with its own statistics, evaluated with the data config's defaults: the
    checkpoint's input contract (mean, std, sizes) decides, so eval gives the run's own test
    metrics (and its saved config says what it used)."""
    stats = ["data.mean=[0.6,0.5,0.4]", "data.std=[0.1,0.2,0.3]"]
    metrics, _ = train(make_cfg(*QUICK, FOUR_BATCHES, "trainer.max_epochs=1", *stats))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    cfg = make_cfg(f"ckpt_path={best}", config_name="eval", run_dir=tmp_path / "eval")
    evaluated, _ = evaluate(cfg)
    for name in ("test/acc", "test/loss"):
        assert evaluated[name] == pytest.approx(metrics[name], abs=1e-6), name
    assert list(cfg.data.mean) == pytest.approx([0.6, 0.5, 0.4])
    assert list(cfg.data.std) == pytest.approx([0.1, 0.2, 0.3])


def test_eval_of_a_timm_model_that_is_not_there_is_one_line(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ckpt_path=timm/...` (a model trained elsewhere: tests/test_push.py evaluates one): a
    folder that is not there, or a Hub name offline and not cached, said in one line before
    anything is built."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for name, says in {
        f"timm/local-dir:{tmp_path / 'nope'}": "is not a folder",
        "timm/hf-hub:someone/missing": "could not be fetched",
    }.items():
        with pytest.raises(UserError, match=says) as err:
            evaluate(make_cfg(f"ckpt_path={name}", config_name="eval"))
        assert "\n" not in str(err.value)

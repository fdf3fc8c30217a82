"""utils/profiling.py: the default profiler times nothing and costs a shared null context."""

from pathlib import Path

from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler

from imgcls.run.compose import compose_config, instantiate
from imgcls.utils.profiling import NoProfiler
from tests.callbacks.tiny import TinyClassifier, loader, tiny_trainer


def test_every_hook_gets_the_one_shared_null_context() -> None:
    profiler = NoProfiler()
    assert isinstance(profiler, PassThroughProfiler)  # what Lightning takes for "none"
    first = profiler.profile("[Callback]A.on_train_batch_end")
    assert first is profiler.profile("[Strategy]B.training_step")
    with first:
        pass
    model = TinyClassifier()
    tiny_trainer(profiler=profiler).fit(model, loader())
    assert [step for step, _ in model.losses] == [1, 2]


def test_runs_profile_nothing_unless_asked(tmp_path: Path) -> None:
    default = compose_config("train", [], tmp_path / "default")
    assert isinstance(instantiate(default.trainer.profiler), NoProfiler)
    asked = compose_config("train", ["trainer.profiler=simple"], tmp_path / "asked")
    trainer = instantiate(asked.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.profiler, SimpleProfiler)
    debug = compose_config("train", ["debug=profiler"], tmp_path / "debug")
    assert debug.trainer.profiler == "simple"

"""run/hints.py: after Hydra refuses a command line, an unknown dotted key gets the close key and
its siblings; a right key gets nothing."""

import sys

import pytest

from imgcls.run.hints import key_hints, with_key_hints


def test_a_typo_names_the_close_key_and_its_siblings() -> None:
    (hint,) = key_hints("train", ["trainer.max_epoch=3"])
    said, keys = hint.split(" The keys of trainer: ")
    assert said == "trainer.max_epoch is not a key. Did you mean trainer.max_epochs?"
    siblings = keys.removesuffix(".").split(", ")
    assert siblings == sorted(siblings)
    assert {"max_epochs", "min_epochs", "accelerator", "devices", "precision"} <= set(siblings)


def test_the_keys_are_those_of_the_group_options_on_the_same_line() -> None:
    (hint,) = key_hints("train", ["model=lenet", "model.net.nmae=x", "optimizer=adam"])
    assert hint.startswith("model.net.nmae is not a key. Did you mean model.net.name? ")
    (hint,) = key_hints("train", ["optimizer=adam", "optimizer.momentun=0.9"])
    assert "Did you mean" not in hint  # Adam has no momentum: nothing close, its keys listed
    assert "The keys of optimizer: " in hint
    assert "betas" in hint
    assert "momentum" not in hint


def test_no_hint_for_a_key_that_exists_with_a_missing_value() -> None:
    assert key_hints("train", ["data=folder", "data.root=/no/such/dir"]) == []
    (hint,) = key_hints("train", ["data=folder", "data.rot=/x"])
    assert hint.startswith("data.rot is not a key. Did you mean data.root?")


def test_nothing_for_right_keys_group_choices_additions_or_hydras_own() -> None:
    right = ["trainer.max_epochs=3", "optimizer.lr=0.1", "model=lenet", "seed=1", "-m"]
    assert key_hints("train", right) == []
    # + adds a key, ~ removes one: neither is a typo of an existing key; hydra.* is Hydra's
    assert key_hints("train", ["+trainer.limit_train_batches=2", "~callbacks.ema.decay=1"]) == []
    assert key_hints("train", ["hydra.run.dri=/x"]) == []
    assert key_hints("eval", ["ckpt_path=x.ckpt", "data.batch_size=8"]) == []


def test_nothing_when_the_group_choice_itself_is_wrong() -> None:
    """Hydra listed the options already: no config composes to compare keys with."""
    assert key_hints("train", ["model=resnett", "model.net.nmae=x"]) == []


def test_a_failing_command_prints_the_hints_and_exits_as_it_did(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "trainer.max_epoch=3"])

    def refused() -> None:
        raise SystemExit(1)

    with pytest.raises(SystemExit) as exit_:
        with_key_hints("train", refused)()
    assert exit_.value.code == 1
    assert "Did you mean trainer.max_epochs?" in capsys.readouterr().err


@pytest.mark.parametrize("code", [0, None])
def test_a_command_that_succeeds_pays_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, code: int | None
) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "trainer.max_epoch=3"])

    def ends(code: int | None = code) -> None:
        raise SystemExit(code)

    with pytest.raises(SystemExit):
        with_key_hints("train", ends)()
    assert with_key_hints("train", lambda: 7)() == 7  # a value comes back as it was
    assert capsys.readouterr().err == ""

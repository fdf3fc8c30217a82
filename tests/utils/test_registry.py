"""utils/registry.py: things chosen by name, one mechanism: registered once each, looked up by
name, and a name not registered is one line with the close match and every option."""

import pytest

from imgcls.utils.errors import UserError
from imgcls.utils.registry import Registry


@pytest.fixture
def samplers() -> Registry:
    samplers: Registry = Registry("data.sampler")

    @samplers.register("random")
    def random_order() -> str:
        return "random"

    samplers.add("balanced", "a balanced draw")
    return samplers


def test_registered_entries_are_looked_up_by_name(samplers: Registry) -> None:
    assert samplers["random"]() == "random"  # the decorated function itself
    assert samplers["balanced"] == "a balanced draw"
    assert list(samplers) == ["random", "balanced"]  # in the order registered
    assert len(samplers) == 2
    assert dict(samplers.items()) == {"random": samplers["random"], "balanced": "a balanced draw"}


def test_the_decorator_hands_back_what_it_registers() -> None:
    nets: Registry = Registry("model.net.name")

    class LeNet:
        pass

    assert nets.register("lenet")(LeNet) is LeNet
    assert nets["lenet"] is LeNet


def test_in_says_whether_a_name_is_registered(samplers: Registry) -> None:
    assert "random" in samplers
    assert "Random" not in samplers
    assert "balancd" not in samplers
    assert 3 not in samplers  # any object may be asked about


def test_a_name_registered_twice_is_refused(samplers: Registry) -> None:
    with pytest.raises(ValueError, match=r"^data\.sampler: 'random' is registered twice$"):
        samplers.add("random", object())
    with pytest.raises(ValueError, match="registered twice"):
        samplers.register("balanced")(object())
    assert samplers["balanced"] == "a balanced draw"  # the first stays


def test_an_unknown_name_is_one_line_with_the_close_match_and_the_options(samplers: Registry):
    with pytest.raises(UserError) as err:
        samplers["balnced"]
    assert str(err.value) == (
        "Unknown data.sampler='balnced'. Did you mean balanced? Options: random, balanced."
    )
    with pytest.raises(UserError) as err:
        samplers["zzz"]
    assert str(err.value) == "Unknown data.sampler='zzz'. Options: random, balanced."


def test_what_else_a_key_takes_is_said_after_the_options() -> None:
    nets: Registry = Registry("model.net.name", more="any torchvision name, or timm/<name>")
    nets.add("resnet_cifar", object())
    nets.add("lenet", object())
    message = str(nets.unknown("resnet_cifr"))
    assert message == (
        "Unknown model.net.name='resnet_cifr'. Did you mean resnet_cifar? Options: resnet_cifar, "
        "lenet; or any torchvision name, or timm/<name>."
    )


def test_unknown_among_other_names_for_another_key(samplers: Registry) -> None:
    """A name the caller looked up elsewhere too (a teacher named as a net): its own options and
    its own config key."""
    err = samplers.unknown("resnet5O", among=["resnet50", "resnet18"], key="model.distill.teacher")
    assert isinstance(err, UserError)
    assert str(err) == (
        "Unknown model.distill.teacher='resnet5O'. Did you mean resnet50 or resnet18? "
        "Options: resnet50, resnet18."
    )


def test_get_of_a_missing_name_gives_the_default(samplers: Registry) -> None:
    assert samplers.get("random") is samplers["random"]
    assert samplers.get("even") is None
    assert samplers.get("even", "random") == "random"

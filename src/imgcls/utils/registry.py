"""Things chosen by name in a config (nets, augmentation presets and policies, samplers, tasks):
one mechanism, so every name a user can mistype gets the same one line with the close match.

    PRESETS = Registry("data.augment.preset")

    @PRESETS.register("cifar")
    def cifar() -> Preset: ...

    PRESETS["cifar"]   # the registered object; any other name: "Unknown data.augment.preset=
                       # 'cifr'. Did you mean cifar? Options: none, standard, cifar, ..."
"""

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from imgcls.utils.errors import UserError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Names -> objects for the config key `key`. `more` names what else the key accepts beside
    the registered names (said after a mistake: "or timm/<name>")."""

    def __init__(self, key: str, more: str = "") -> None:
        self.key, self.more = key, more
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator: the function or class it decorates is registered as `name`."""

        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is registered twice")
        self._entries[name] = entry

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries[name]

    def get(self, name: str, default: T | None = None) -> T | None:  # type: ignore[override]
        """The entry, or `default` for a name not registered (no line: the caller decides)."""
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def unknown(
        self, name: object, among: Iterable[str] | None = None, key: str | None = None
    ) -> UserError:
        """The one line for a name that is not registered (nor among `among`, where given): the
        close match, then every option. `key`: the config key that named it, where another
        than the registry's own (a teacher named as a net)."""
        names = list(self._entries) if among is None else list(among)
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
        guess = f" Did you mean {' or '.join(close)}?" if close else ""
        more = f"; or {self.more}" if self.more else ""
        said = key or self.key
        return UserError(f"Unknown {said}={name!r}.{guess} Options: {', '.join(names)}{more}.")

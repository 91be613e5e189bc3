"""One plain-dict registry per extension axis (layer converters, calibrators, metrics, strategies, formats).

Registration is a decorator that refuses duplicates; a failed lookup lists every valid name.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named dict of plug-ins. `kind` is used in messages ("layer converter", "metric", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator registering the object under each of `names`; a name already taken is an error."""
        if not names:
            raise ValueError(f"register() of a {self.kind} needs at least one name")

        def decorator(obj: T) -> T:
            for name in names:
                self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise RegistryError(
                f"{self.kind} {name!r} is already registered (by {_describe(self._items[name])}); "
                f"refusing to replace it with {_describe(obj)}"
            )
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._items)) or '(none)'}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)


def _describe(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{module}.{name}" if module else str(name)

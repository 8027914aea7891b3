"""Name -> builder registries: configs and checkpoints name things, registries build them."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from lightning_emo.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
    """A name no builder is registered under (a config's ``head: lstmm``); the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A mapping from names to builders, filled with the :meth:`register` decorator.

    >>> heads = Registry("head")
    >>> @heads.register("lstm")
    ... def build_lstm(**kw): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str, builder: Callable[..., T] | None = None):
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = fn
            return fn

        return deco(builder) if builder is not None else deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._builders[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._builders))}") from None

    def build(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._builders))

    def names(self) -> list[str]:
        return sorted(self._builders)

"""Name -> builder registries: configs and checkpoints name things, registries build them."""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterable, Iterator, TypeVar

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
        self._lazy: dict[str, str] = {}  # name -> the module whose import registers it
        self._modules: list[str] = []

    def add_lazy(self, module: str, names: Iterable[str]) -> None:
        """Declare that importing ``module`` registers ``names``: it is imported when one of them is first asked
        for (or when every name is listed), so that using one builder never imports the others' dependencies."""
        if module not in self._modules:
            self._modules.append(module)
        for name in names:
            self._lazy[name] = module

    def _load(self, name: str | None = None) -> None:
        """Import the module that registers ``name`` (``None``, or a name nobody declared: every module)."""
        if name is not None and name in self._builders:
            return
        modules = [self._lazy[name]] if name in self._lazy else self._modules
        for module in modules:
            importlib.import_module(module)

    def register(self, name: str, builder: Callable[..., T] | None = None):
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = fn
            return fn

        return deco(builder) if builder is not None else deco

    def get(self, name: str) -> Callable[..., T]:
        self._load(name)
        try:
            return self._builders[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def build(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def __contains__(self, name: str) -> bool:
        self._load(name)
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        """Every registered name (imports every lazily declared module)."""
        self._load()
        return sorted(self._builders)

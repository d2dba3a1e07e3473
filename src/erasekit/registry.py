"""Named registries: how the parts of erasekit (and other packages) plug into each other without importing each other.

Methods, module kinds, built-in models, metrics, attacks, prompt sets, classifiers and data sources are each a
:class:`Registry`. Code registers into one with a decorator (``@METHODS.register("uce")``) when its module is
imported; code that needs an entry asks by name (``METHODS.get("uce")``).

A registry that misses a name first loads the *plugins*: the entry points of the group ``erasekit.plugins`` (declared
in a package's ``pyproject.toml``; erasekit's own benchmark world is one). So the core never imports the benchmark
world, and another package can add a model, a prompt set or a data source the same way. A registry may also have a
``loader`` of its own (the methods registry imports every module under ``erasekit.methods``): adding a method is
adding a file.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import ConfigError, ErasekitError

T = TypeVar("T")

PLUGIN_GROUP = "erasekit.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Import every ``erasekit.plugins`` entry point once per process (each registers what it provides)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda p: p.name):
        try:
            point.load()
        except ErasekitError:
            raise
        except Exception as exc:  # a broken third-party plugin must not break every lookup
            raise ErasekitError(f"erasekit plugin '{point.name}' ({point.value}) failed to load: {exc}") from None


class Registry(Generic[T]):
    """Entries by name, with a one-line :class:`ConfigError` (and a close match) for an unknown one.

    ``what`` names the entries in messages ("method", "built-in model"). On a lookup that misses, the plugins are
    loaded, then ``loader(name)`` (``loader(None)`` before a listing) may import whatever registers more entries.
    """

    def __init__(self, what: str, loader: Callable[[str | None], None] | None = None) -> None:
        self.what = what
        self._entries: dict[str, T] = {}
        self._loader = loader

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator adding its object under ``name`` (default: the object's ``name`` attribute)."""

        def decorator(obj: T) -> T:
            self.add(name if name is not None else obj.name, obj)  # type: ignore[attr-defined]
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Add ``obj`` under ``name``; a name taken by another object is a programming error."""
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.what} '{name}' is registered twice")
        self._entries[name] = obj

    def _load(self, name: str | None = None) -> None:
        load_plugins()
        if self._loader is not None:
            self._loader(name)

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name is a :class:`ConfigError` listing what exists."""
        if name not in self._entries:
            self._load(name)
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown {self.what} '{name}'{hint}; available: {', '.join(self.names()) or 'none'}")
        return self._entries[name]

    __getitem__ = get

    def names(self) -> list[str]:
        """Every registered name, plugins and loader included, in registration order."""
        self._load()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries and isinstance(name, str):
            self._load(name)
        return name in self._entries

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._entries.items())

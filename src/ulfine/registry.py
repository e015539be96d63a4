"""String registries, so that adding a dataset, fine-tuning mode, PEFT module or method is adding
one file and one name (as in timm's ``@register_model``), from ulfine or from a user's plugin.
Backbones trained from scratch (WRN-28-2, ResNet-50) are registered by architecture name in
:data:`BACKBONES`; any other ``model.arch`` is an open_clip architecture.

The registries live here, at the bottom of the house, so that the config layer can validate
``method=``, ``finetune=``, ``peft=`` and each method's options against what is registered
without importing the layers that fill them. They are filled by importing the modules that
register entries: ulfine's own packages (:data:`BUILTIN_MODULES`), the modules of the Python
entry-point group ``ulfine.plugins``, and modules named by the user (``--plugin`` or the
config's ``plugins`` key). :func:`load_builtins` does the first two, once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")

#: the packages whose import registers ulfine's own entries
BUILTIN_MODULES = ("ulfine.models", "ulfine.data", "ulfine.methods")
#: the entry-point group a third-party package uses to register its plugin modules
ENTRY_POINT_GROUP = "ulfine.plugins"


class Registry(Generic[T]):
    """Maps names to entries; unknown names fail with the list of known ones.

    An entry may come with an options class (a pydantic model): the config validates the
    section named after the entry against it (``ulfine.beta=0.9`` for the method ``ulfine``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._options: dict[str, type] = {}

    def register(self, name: str, options: type | None = None) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` (names are unique).

        A class with a ``name`` attribute gets it set here, so the name is written once.
        """

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if isinstance(obj, type) and hasattr(obj, "name"):
                obj.name = name  # type: ignore[attr-defined]
            self._items[name] = obj
            if options is not None:
                self._options[name] = options
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a temporary plugin clean up with this)."""
        self._items.pop(name, None)
        self._options.pop(name, None)

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise a ConfigError naming the choices."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def options(self) -> dict[str, type]:
        """Entry name -> its options class, for the entries that declared one."""
        return dict(self._options)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


#: ulfine's registries (entries are added by the modules of higher layers and by plugins)
METHODS: Registry[Any] = Registry("method")
FINETUNE_MODES: Registry[Any] = Registry("finetune mode")
PEFT_MODULES: Registry[Any] = Registry("PEFT module")
DATASETS: Registry[Any] = Registry("dataset")
#: backbones built by ulfine (random initialisation, no text tower), by ``model.arch``; an arch
#: not registered here is looked up in open_clip
BACKBONES: Registry[Any] = Registry("backbone")

#: registries whose entries may declare an options section of the config
OPTION_REGISTRIES: tuple[Registry[Any], ...] = (METHODS, PEFT_MODULES)

_loaded: set[str] = set()


def load_plugin(name: str) -> None:
    """Import a plugin module by dotted name or ``.py`` file path (once), registering its entries."""
    if name in _loaded:
        return
    try:
        if name.endswith(".py"):
            path = Path(name)
            if not path.is_file():
                raise ConfigError(f"plugin file {name} does not exist")
            spec = importlib.util.spec_from_file_location(f"ulfine_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[spec.name] = module  # type: ignore[union-attr]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"plugin {name!r} cannot be imported: {exc}") from None
    _loaded.add(name)


def load_builtins() -> None:
    """Register ulfine's own entries and those of installed ``ulfine.plugins`` packages (once)."""
    for module in BUILTIN_MODULES:
        load_plugin(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        load_plugin(ep.value.split(":")[0])


__all__ = [
    "BACKBONES", "BUILTIN_MODULES", "DATASETS", "ENTRY_POINT_GROUP", "FINETUNE_MODES", "METHODS",
    "OPTION_REGISTRIES", "PEFT_MODULES", "Registry", "load_builtins", "load_plugin",
]

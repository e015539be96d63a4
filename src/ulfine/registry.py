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
import os
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


def plugin_key(name: str) -> str:
    """The identity of a plugin: a ``.py`` file's absolute path (so ``./p.py`` typed in one folder
    and ``/abs/p.py`` recorded in a run's config are one plugin), else the dotted module name."""
    return os.path.abspath(os.path.expanduser(name)) if name.endswith(".py") else name


def plugin_names(value: Any, where: str) -> list[str]:
    """The ``plugins`` entry of a config as a list of names: one name or a list of them.

    Why: a damaged or hand-written config with ``plugins: evil.py`` (a string) must not be read
    letter by letter as the modules ``e``, ``v``, ``i``...
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"invalid config: plugins in {where} must be a list of module names or .py files "
                          f"(got {value!r})")
    return list(value)


def is_loaded(name: str) -> bool:
    """Whether importing ``name`` would run no new code: loaded as a plugin already, or a dotted
    module Python has already imported."""
    key = plugin_key(name)
    return key in _loaded or (not name.endswith(".py") and key in sys.modules)


def load_plugin(name: str) -> None:
    """Import a plugin module by dotted name or ``.py`` file path (once), registering its entries.

    Only call it for names the user gave (``--plugin``, a preset, ``plugins=``) or consented to
    (:func:`consent_to_plugins`): importing a module runs its code.
    """
    key = plugin_key(name)
    if key in _loaded:
        return
    try:
        if name.endswith(".py"):
            path = Path(key)
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
    except SyntaxError as exc:
        raise ConfigError(f"plugin {name!r} is not valid Python ({exc.msg}, line {exc.lineno})") from None
    _loaded.add(key)


#: the command-line flag and the Python argument that give consent to a folder's plugins
TRUST_FLAG = "--trust-plugins"
TRUST_ARG = "trust_plugins=True"


def consent_to_plugins(names: list[str], source: str, trusted: bool) -> None:
    """Import the plugins a run or model folder names, only with the user's consent.

    Why: a folder someone shared can carry a ``.py`` file and a config naming it; importing it
    runs that code, so (as Hugging Face's ``trust_remote_code``) ulfine imports only what the
    user typed, installed (entry points), or consented to for this folder. Plugins already
    imported (the user named them with ``--plugin``) need no consent. Without it, one line names
    the plugin and the flag, and nothing is imported.
    """
    load_builtins()
    waiting = [n for n in names if not is_loaded(n)]
    if waiting and not trusted:
        more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
        raise ConfigError(f"{source} names the plugin {waiting[0]!r}{more}, code that would run when imported; "
                          f"pass {TRUST_FLAG} (Python: {TRUST_ARG}) only if you trust where it came from, "
                          f"or name it yourself with --plugin")
    for name in waiting:
        load_plugin(name)


def load_builtins() -> None:
    """Register ulfine's own entries and those of installed ``ulfine.plugins`` packages (once)."""
    for module in BUILTIN_MODULES:
        load_plugin(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        load_plugin(ep.value.split(":")[0])


__all__ = [
    "BACKBONES", "BUILTIN_MODULES", "DATASETS", "ENTRY_POINT_GROUP", "FINETUNE_MODES", "METHODS",
    "OPTION_REGISTRIES", "PEFT_MODULES", "Registry", "TRUST_FLAG", "consent_to_plugins", "is_loaded",
    "load_builtins", "load_plugin", "plugin_key", "plugin_names",
]

"""The method registry: built-in methods and third-party plugins (entry-point group ``recshrink.methods``).

Built-ins register themselves with :func:`register_method` when their module is imported;
:data:`BUILTIN_MODULES` lists those modules. A plugin distribution declares, in its metadata,

.. code-block:: toml

    [project.entry-points."recshrink.methods"]
    my-method = "my_package.module:MyMethod"

The entry point may name a :class:`~methods.base.Method` subclass (registered under the entry
point's name unless it is already registered) or a module whose import registers methods.
"""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from typing import Any

from methods.base import AXES, Method, MethodError

ENTRY_POINT_GROUP = "recshrink.methods"
BUILTIN_MODULES: tuple[str, ...] = (
    "methods.reference", "methods.random_drop", "methods.magnitude", "methods.unkd", "methods.dsl",
    "methods.lightgnn", "methods.legcf", "methods.lerg",
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

_REGISTRY: dict[str, type[Method]] = {}
_SOURCES: dict[str, str] = {}
_LOADED = False
_PLUGIN_ERRORS: dict[str, str] = {}


class UnknownMethodError(MethodError):
    """A method name that is neither built in nor provided by an installed plugin."""


def register_method(name: str, *, source: str | None = None):
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        _register(name, cls, source or f"{cls.__module__}.{cls.__qualname__}")
        return cls

    return deco


def _register(name: str, cls: type[Method], source: str) -> None:
    if not _NAME.match(name):
        raise MethodError(f"invalid method name {name!r}: use lower-case letters, digits, '-', '_' or '.'")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise MethodError(f"method {name!r} must be a subclass of methods.base.Method, got {cls!r}")
    bad_axes = sorted(set(cls.axes) - set(AXES))
    if bad_axes:
        raise MethodError(f"method {name!r} declares unknown axes {bad_axes}; choose from {AXES}")
    if not cls.description:
        raise MethodError(f"method {name!r} needs a one-line description")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise MethodError(f"method name {name!r} is already registered by {_SOURCES[name]}")
    cls.name = name
    _REGISTRY[name] = cls
    _SOURCES[name] = source


def _load_plugins() -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        where = f"entry point {ep.name} = {ep.value}" + (f" ({dist.name} {dist.version})" if dist else "")
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not hide the others
            _PLUGIN_ERRORS[ep.name] = f"{where}: {type(exc).__name__}: {exc}"
            continue
        if isinstance(obj, type) and issubclass(obj, Method):
            if obj not in _REGISTRY.values():
                _register(ep.name, obj, where)
            else:
                for name, cls in _REGISTRY.items():
                    if cls is obj:
                        _SOURCES[name] = where


def load_all(reload_plugins: bool = False) -> None:
    """Import the built-in methods and every installed plugin (once, unless ``reload_plugins``)."""
    global _LOADED
    if _LOADED and not reload_plugins:
        return
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    _load_plugins()
    _LOADED = True


def available_methods() -> dict[str, type[Method]]:
    load_all()
    return dict(sorted(_REGISTRY.items()))


def plugin_errors() -> dict[str, str]:
    """Entry points that failed to load, with the error (shown by ``recshrink methods``)."""
    load_all()
    return dict(_PLUGIN_ERRORS)


def get_method(name: str) -> type[Method]:
    methods = available_methods()
    if name not in methods:
        hint = f" (plugin failed to load: {_PLUGIN_ERRORS[name]})" if name in _PLUGIN_ERRORS else ""
        raise UnknownMethodError(f"unknown method {name!r}{hint}; available: {', '.join(methods)}")
    return methods[name]


def method_source(name: str) -> str:
    get_method(name)
    return _SOURCES[name]


def describe_methods() -> list[dict[str, Any]]:
    """``recshrink methods --json``: name, axes, description, knobs (and source, target mapping)."""
    return [{**cls.info(), "source": _SOURCES[name]} for name, cls in available_methods().items()]

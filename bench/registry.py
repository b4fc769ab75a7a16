"""The method registry: every method, built in or third-party, is found through the entry-point
group ``recshrink.methods``.

A distribution declares its methods in its metadata; recshrink's own built-ins are declared the
same way in its ``pyproject.toml``:

.. code-block:: toml

    [project.entry-points."recshrink.methods"]
    my-method = "my_package.module:MyMethod"

The entry point may name a :class:`~bench.contract.Method` subclass (registered under the entry
point's name unless it is already registered) or a module whose import registers methods with
the :func:`register_method` decorator. Entry points come from installed metadata: in a source
checkout, ``pip install -e .`` (a checkout that is not installed finds no method at all, and says so).
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

from bench.contract import AXES, REFERENCE, Method, MethodError

ENTRY_POINT_GROUP = "recshrink.methods"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

_REGISTRY: dict[str, type[Method]] = {}
_SOURCES: dict[str, str] = {}
_LOADED = False
_PLUGIN_ERRORS: dict[str, str] = {}


class UnknownMethodError(MethodError):
    """A method name that is neither built in nor provided by an installed plugin."""


class NoMethodsError(MethodError):
    """No method at all: recshrink's own entry points are missing (the package is not installed)."""


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
        raise MethodError(f"method {name!r} must be a subclass of bench.api.Method, got {cls!r}")
    bad_axes = sorted(set(cls.axes) - set(AXES))
    if bad_axes:
        raise MethodError(f"method {name!r} declares unknown axes {bad_axes}; choose from {AXES}")
    if not cls.description:
        raise MethodError(f"method {name!r} needs a one-line description")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise MethodError(f"method name {name!r} is already registered by {_SOURCES[name]}")
    _check_streams(name, cls)
    cls.name = name
    _REGISTRY[name] = cls
    _SOURCES[name] = source


def _check_streams(name: str, cls: type[Method]) -> None:
    """A stream name means one stream id everywhere, and an id belongs to one name."""
    known = {s: (i, other) for other, c in _REGISTRY.items() if other != name
             for s, i in c.random_streams.items()}
    by_id = {i: (s, other) for s, (i, other) in known.items()}
    for stream, sid in cls.random_streams.items():
        if isinstance(sid, bool) or not isinstance(sid, int) or sid < 0:
            raise MethodError(f"method {name!r}: random stream {stream!r} needs an integer id >= 0, "
                              f"got {sid!r}")
        if stream in known and known[stream][0] != sid:
            raise MethodError(f"method {name!r}: random stream {stream!r} has id {sid}, but method "
                              f"{known[stream][1]!r} declares it with id {known[stream][0]}")
        if sid in by_id and by_id[sid][0] != stream:
            raise MethodError(f"method {name!r}: random stream id {sid} ({stream!r}) is already stream "
                              f"{by_id[sid][0]!r} of method {by_id[sid][1]!r}")


def random_streams() -> dict[str, int]:
    """Every random stream a registered method declares: name -> id."""
    return {s: i for cls in available_methods().values() for s, i in cls.random_streams.items()}


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
            elif _REGISTRY.get(ep.name) is not obj:
                for name, cls in _REGISTRY.items():
                    if cls is obj:
                        _SOURCES[name] = where


def load_all(reload_plugins: bool = False) -> None:
    """Load every method declared in the ``recshrink.methods`` entry-point group, built in or not
    (once, unless ``reload_plugins``)."""
    global _LOADED
    if _LOADED and not reload_plugins:
        return
    _load_plugins()
    if not _REGISTRY:
        raise NoMethodsError(
            f"no compression method found: nothing is declared in the entry-point group {ENTRY_POINT_GROUP!r}"
            " (not even the built-ins, which recshrink declares in its pyproject.toml). Install the package"
            " so that its metadata is visible: `pip install -e .` in the repository")
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
        if REFERENCE not in methods:
            hint += (" (recshrink's built-in methods are missing: its entry points are not installed;"
                     " run `pip install -e .` in the repository)")
        raise UnknownMethodError(f"unknown method {name!r}{hint}; available: {', '.join(methods)}")
    return methods[name]


def method_source(name: str) -> str:
    get_method(name)
    return _SOURCES[name]


def describe_methods() -> list[dict[str, Any]]:
    """``recshrink methods --json``: name, axes, description, knobs (and source, target mapping)."""
    return [{**cls.info(), "source": _SOURCES[name]} for name, cls in available_methods().items()]

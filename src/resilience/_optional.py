"""Lazy imports of optional dependencies, with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from ._errors import MissingExtraError

__all__ = ["require"]


def require(module: str, extra: str) -> ModuleType:
    """Import *module* or raise `MissingExtraError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and module.split(".", maxsplit=1)[0] != exc.name.split(".")[0]:
            raise  # the package is there but one of *its* imports failed: show that
        raise MissingExtraError(module, extra) from exc

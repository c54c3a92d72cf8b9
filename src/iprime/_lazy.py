"""Package attributes imported on first use (PEP 562), so that importing a light submodule of a
package (the command line imports several) does not load torch and transformers through its
``__init__``."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` in ``exports`` is read from the
    submodule ``exports[name]`` (relative to ``package``) when first asked for."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

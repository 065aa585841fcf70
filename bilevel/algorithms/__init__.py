"""One file per algorithm; configs/algorithm/<name>.yaml names the class by _target_.

The registry is discovered: every :class:`Algorithm` subclass in a module of this package that
sets ``name`` is registered under it, so adding an algorithm touches no shared file.
"""

from __future__ import annotations

import importlib
import pkgutil

from bilevel.algorithms.base import Algorithm, LowerEstimateUpper, State


def _discover() -> dict[str, type[Algorithm]]:
    found: dict[str, type[Algorithm]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Algorithm)
                and obj.__module__ == module.__name__
                and obj.name
            ):
                if obj.name in found:
                    raise RuntimeError(f"two algorithms named {obj.name!r}")
                found[obj.name] = obj
    return dict(sorted(found.items()))


REGISTRY: dict[str, type[Algorithm]] = _discover()
globals().update({cls.__name__: cls for cls in REGISTRY.values()})

__all__ = [
    "REGISTRY",
    "Algorithm",
    "LowerEstimateUpper",
    "State",
    *(cls.__name__ for cls in REGISTRY.values()),
]

"""Ray-free scorers over Arrow rows. A filter is one file here: its stage finds it by name.

`filters_for("quality")` imports every module of this folder once and returns the `Filter`
classes whose `stage` is "quality", in their `order`: adding a file with such a class is all it
takes to add a filter (plus its config field and its test). A class whose name starts with `_` is
a base that several filters share (`embedding_head._HeadFilter`), not a filter.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from mmcurate.filters.base import Filter


@cache
def _all_filters() -> tuple[type[Filter], ...]:
    found: list[type[Filter]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += [obj for obj in vars(module).values()  # defined there, and not a base (_Name) that filters share
                  if isinstance(obj, type) and issubclass(obj, Filter) and obj.__module__ == module.__name__
                  and obj is not Filter and not obj.__name__.startswith("_")]
    return tuple(found)


def filters_for(stage: str) -> list[type[Filter]]:
    """The filter classes of `stage`, in the order their objections count."""
    return sorted((f for f in _all_filters() if f.stage == stage), key=lambda f: (f.order, f.name))

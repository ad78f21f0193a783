"""The data-source seam: every source registers its name, its config model and its loader here.

A source is one module of `medlite.data` that defines
- a config model: a subclass of `medlite.data.config.DataConfig` with `source: Literal["<name>"]`
  and the source's own keys (the recipe's `data` section is validated against it), and
- a loader `load(cfg, data_root) -> medlite.data.dataset.Source` that reads the images, labels,
  ids and groups (splitting, folds, limits and checks are shared: `medlite.data.load_dataset`),
and calls `register_source(name, Config, load)` at its end. The built-in sources are found by
importing every module of this package once, on the first lookup, so adding a source touches only
its own module. Code outside the package registers the same way before it validates a recipe.
"""

from __future__ import annotations

import difflib
import pkgutil
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from medlite.errors import DataError

if TYPE_CHECKING:  # type hints only: the dataset module imports numpy, this one stays light
    from medlite.data.config import DataConfig
    from medlite.data.dataset import Source


@dataclass(frozen=True)
class SourceSpec:
    name: str
    config: "type[DataConfig]"
    load: "Callable[[DataConfig, Path], Source]"
    doc: str = ""


SOURCES: dict[str, SourceSpec] = {}
_discovered = False


def register_source(name: str, config: "type[DataConfig]", load: "Callable[[DataConfig, Path], Source]", doc: str = "") -> SourceSpec:
    """Register a data source; its config model must declare `source: Literal[name]`."""
    field = config.model_fields.get("source")
    if field is None or field.default != name:
        raise ValueError(f"data source {name!r}: its config model {config.__name__} must declare source: Literal[{name!r}] = {name!r}")
    spec = SourceSpec(name, config, load, doc or ((config.__doc__ or "").strip().splitlines() or [""])[0])
    if name in SOURCES and (SOURCES[name].config is not config or SOURCES[name].load is not load):
        raise ValueError(f"data source {name!r} is already registered (by {SOURCES[name].config.__module__})")
    SOURCES[name] = spec
    return spec


def _discover() -> None:
    """Import every module of medlite.data once: each source module registers itself."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # before importing: a module that looks a source up while loading must not recurse
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        import_module(f"{__package__}.{module.name}")


def known_sources() -> list[str]:
    _discover()
    return sorted(SOURCES)


def source_spec(name: str) -> SourceSpec:
    """The registered source `name`; a DataError naming the known ones otherwise."""
    _discover()
    if name not in SOURCES:
        hint = difflib.get_close_matches(str(name), list(SOURCES), n=1)
        raise DataError(
            f"data.source: unknown data source {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; known: {', '.join(sorted(SOURCES))}"
        )
    return SOURCES[name]

"""The model registry (the timm way): every architecture name medlite accepts resolves to one registered kind.

Three kinds of entry, each with a builder and (where a name alone is not enough) a checker:
- a **model**, by exact name (`@register_model`, e.g. `medlite_dsconv`);
- a **family**, by prefix and a name-level test of the rest (`register_family`, e.g. `small_` +
  a timm model; the plain timm names are the family with the empty prefix);
- a **composite**, `kind(arch, arch, ...)` (`register_composite`, e.g. `ensemble(a,b)`, `fused(a)`):
  a model built from the models its arguments name.

An architecture name is read by ONE parser, `parse_arch`, with this grammar (whitespace ignored):

    arch := NAME | KIND "(" arch ("," arch)* ")"      NAME, KIND: any characters but "(", ")", ","

`check_arch` (fail fast, before anything trains) and `create` (build) both walk its tree. A new kind
is one `register_composite` call in its own module under `medlite/models/` (the hybrid two-backbone
models, `hybrid(a,b)`, are `hybrid.py`): every module there is imported (so registered) before the
first look-up.

Light on purpose (no torch, no timm at import): recipes and the CLI import this module; the builders
import the deep-learning libraries when they run.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from medlite.errors import UsageError

IMAGENET = "imagenet"
_SPECIAL = "(),"


# -- the grammar ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """A parsed architecture name: a leaf `name` (no `args`), or the composite `name(args...)`."""

    name: str
    args: tuple[Arch, ...] = ()

    @property
    def composite(self) -> bool:
        return bool(self.args)

    def __str__(self) -> str:
        return call_arch(self.name, *map(str, self.args)) if self.args else self.name


def call_arch(kind: str, *args: str) -> str:
    """The name of the composite `kind` over `args` (what `parse_arch` reads back)."""
    return f"{kind}({','.join(args)})"


ENSEMBLE, FUSED = "ensemble", "fused"  # the built-in composite kinds (built in medlite.models.composite)


def parse_arch(arch: str) -> Arch:
    """Read an architecture name into its tree; a malformed one is a UsageError naming the spot."""
    pos = 0

    def fail(problem: str) -> UsageError:
        return UsageError(f"architecture {arch!r}: {problem} at character {pos + 1} "
                          "(a name, or kind(arch, ...) such as ensemble(a,b) or fused(a))")

    def skip() -> None:
        nonlocal pos
        while pos < len(arch) and arch[pos].isspace():
            pos += 1

    def node() -> Arch:
        nonlocal pos
        skip()
        start = pos
        while pos < len(arch) and arch[pos] not in _SPECIAL and not arch[pos].isspace():
            pos += 1
        name = arch[start:pos]
        if not name:
            raise fail("expected an architecture name")
        skip()
        if pos >= len(arch) or arch[pos] != "(":
            return Arch(name)
        pos += 1
        args = [node()]
        skip()
        while pos < len(arch) and arch[pos] == ",":
            pos += 1
            args.append(node())
            skip()
        if pos >= len(arch) or arch[pos] != ")":
            raise fail(f"expected ',' or ')' after the arguments of {name}(...)")
        pos += 1
        return Arch(name, tuple(args))

    tree = node()
    skip()
    if pos != len(arch):
        raise fail(f"unexpected {arch[pos]!r}")
    return tree


# -- the kinds --------------------------------------------------------------------------------------------


class ModelBuilder(Protocol):
    def __call__(self, num_classes: int, in_chans: int, img_size: int) -> Any: ...


class FamilyBuilder(Protocol):
    def __call__(self, base: str, arch: str, num_classes: int, in_chans: int, img_size: int,
                 pretrained: str | Path | None) -> Any: ...


class CompositeBuilder(Protocol):
    def __call__(self, members: list[str], num_classes: int, in_chans: int, img_size: int,
                 pretrained: str | Path | None) -> Any: ...


@dataclass(frozen=True)
class Model:
    """One architecture by exact name. `imagenet`: the builder can take timm's ImageNet weights."""

    name: str
    build: ModelBuilder
    module: str
    imagenet: bool = False


@dataclass(frozen=True)
class Family:
    """Names `prefix + base` where `claims(base)` (a cheap name-level test) holds.

    `check(base, arch)` raises a UsageError for a claimed name that cannot be built (it may build on the
    meta device); `names()` lists the bases worth suggesting. The builder handles `pretrained="imagenet"`
    itself when `imagenet`; a local weights file is loaded by `create` after the build.
    """

    name: str
    prefix: str
    claims: Callable[[str], bool]
    build: FamilyBuilder
    module: str
    check: Callable[[str, str], None] | None = None
    names: Callable[[], Iterable[str]] = tuple
    imagenet: bool = False


@dataclass(frozen=True)
class Composite:
    """`kind(a, b, ...)`: a model made of the models `a`, `b`, ... name.

    The builder gets the members' names (canonical strings) and builds them with `create`, passing
    `pretrained` on as it sees fit; `check(members, arch)` adds checks beyond the members' own.
    """

    kind: str
    build: CompositeBuilder
    module: str
    min_args: int = 1
    max_args: int | None = None
    check: Callable[[list[str], str], None] | None = None

    def arity(self) -> str:
        if self.max_args == self.min_args:
            return f"exactly {self.min_args} architecture{'s' if self.min_args > 1 else ''}"
        if self.max_args is None:
            return f"at least {self.min_args} architecture{'s' if self.min_args > 1 else ''}"
        return f"{self.min_args} to {self.max_args} architectures"


_MODELS: dict[str, Model] = {}
_FAMILIES: dict[str, Family] = {}
_COMPOSITES: dict[str, Composite] = {}
_loaded = False


def _add(table: dict, key: str, entry: Model | Family | Composite) -> None:
    old = table.get(key)
    if old is not None and old.module != entry.module:  # the same module imported again may re-register
        raise ValueError(f"model registry: {key!r} is already registered by {old.module}")
    table[key] = entry


def register_model(fn: Callable | None = None, *, name: str | None = None, imagenet: bool = False) -> Callable:
    """Decorator: register `fn(num_classes, in_chans, img_size)` under its own name (or `name`)."""

    def add(f: Callable) -> Callable:
        key = name or f.__name__
        if any(ch in _SPECIAL or ch.isspace() for ch in key):
            raise ValueError(f"model registry: {key!r}: a model name has no spaces, parentheses or commas")
        _add(_MODELS, key, Model(key, f, f.__module__, imagenet))
        return f

    return add(fn) if fn is not None else add


def register_family(name: str, prefix: str, claims: Callable[[str], bool], build: FamilyBuilder, *,
                    check: Callable[[str, str], None] | None = None, names: Callable[[], Iterable[str]] = tuple,
                    imagenet: bool = False, module: str | None = None) -> Family:
    """Register the family `name` of architectures `prefix + base` (see `Family`)."""
    family = Family(name, prefix, claims, build, module or build.__module__, check, names, imagenet)
    _add(_FAMILIES, name, family)
    return family


def register_composite(kind: str, *, min_args: int = 1, max_args: int | None = None,
                       check: Callable[[list[str], str], None] | None = None) -> Callable:
    """Decorator: register `fn(members, num_classes, in_chans, img_size, pretrained)` as `kind(...)`."""

    def add(f: CompositeBuilder) -> CompositeBuilder:
        _add(_COMPOSITES, kind, Composite(kind, f, f.__module__, min_args, max_args, check))
        return f

    return add


def unregister(name: str) -> None:
    """Remove a model, family or composite kind (tests plug one in and take it out again)."""
    for table in (_MODELS, _FAMILIES, _COMPOSITES):
        table.pop(name, None)


def _load_builtins() -> None:
    """Import every module of `medlite.models` once: each registers its kinds as it is imported."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: a module that looks something up while importing must not recurse
    try:
        # The modules beside this one, found on disk (no hand-kept list): a new kind's module is found too.
        for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
            if not info.name.startswith("_") and info.name != "registry":
                importlib.import_module(f"{__package__}.{info.name}")
    except BaseException:
        _loaded = False
        raise


# -- looking names up -------------------------------------------------------------------------------------


def _families() -> list[Family]:
    """Longest prefix first (`small_pooled_` before `small_`, the timm names' empty prefix last);
    families sharing a prefix in the order they were registered."""
    return sorted(_FAMILIES.values(), key=lambda f: -len(f.prefix))


def _leaf(name: str) -> tuple[Model | Family, str]:
    if name in _MODELS:
        return _MODELS[name], name
    for family in _families():
        if name.startswith(family.prefix) and family.claims(name[len(family.prefix):]):
            return family, name[len(family.prefix):]
    raise unknown_arch(name)


def _composite(node: Arch) -> Composite:
    entry = _COMPOSITES.get(node.name)
    if entry is None:
        kinds = sorted(_COMPOSITES)
        hints = difflib.get_close_matches(node.name, kinds, n=1, cutoff=0.6)
        hint = f"did you mean {hints[0]}(...)? " if hints else ""
        raise UsageError(f"unknown architecture {str(node)!r}: no kind {node.name}(...); {hint}"
                         f"kinds: {', '.join(k + '(...)' for k in kinds)}")
    n = len(node.args)
    if n < entry.min_args or (entry.max_args is not None and n > entry.max_args):
        raise UsageError(f"{str(node)!r}: {entry.kind}(...) takes {entry.arity()}, not {n}")
    return entry


def check_arch(arch: str) -> None:
    """Fail fast (before any data is read or model trained) on an architecture name we cannot build."""
    _load_builtins()
    _check(parse_arch(arch))


def _check(node: Arch) -> None:
    if node.composite:
        entry = _composite(node)
        for member in node.args:
            try:
                _check(member)
            except UsageError as err:  # say which composite the member is in: hybrid(a,b): 'b' ...
                raise UsageError(f"{node}: {err}") from None
        if entry.check:
            entry.check([str(a) for a in node.args], str(node))
        return
    entry, base = _leaf(node.name)
    if isinstance(entry, Family) and entry.check:
        entry.check(base, node.name)


def is_model(arch: str) -> bool:
    """Whether `create` can build `arch` (the checks of `check_arch`, as a boolean)."""
    try:
        check_arch(arch)
    except UsageError:
        return False
    return True


def create(arch: str, num_classes: int, in_chans: int = 1, img_size: int = 28, pretrained: str | Path | None = None):
    """Build a classifier by name; optionally load weights: a local file (safetensors or a timm
    checkpoint) or `imagenet` (timm's ImageNet weights from the Hugging Face hub, cached in the user cache).

    A composite passes `pretrained` to its members (each loads the file, or timm's weights).
    """
    _load_builtins()
    return _build(parse_arch(arch), num_classes, in_chans, img_size, pretrained)


def _build(node: Arch, num_classes: int, in_chans: int, img_size: int, pretrained: str | Path | None):
    if node.composite:
        entry = _composite(node)
        return entry.build([str(a) for a in node.args], num_classes, in_chans, img_size, pretrained)
    entry, base = _leaf(node.name)
    if pretrained == IMAGENET and not entry.imagenet:
        raise UsageError(f"pretrained: imagenet: no ImageNet weights for {node.name!r} (timm models only); "
                         "give a local .safetensors file")
    if isinstance(entry, Model):
        model = entry.build(num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    else:
        model = entry.build(base, node.name, num_classes, in_chans, img_size, pretrained)
    if pretrained and pretrained != IMAGENET:
        from medlite.models.weights import load_pretrained  # here: weights loads torch

        load_pretrained(model, Path(pretrained))
    return model


def known_names() -> list[str]:
    """Every leaf name worth suggesting: the registered models, then each family's names."""
    _load_builtins()
    names = list(_MODELS)
    for family in _FAMILIES.values():
        names += [family.prefix + base for base in family.names()]
    return names


def list_models(pattern: str = "*") -> list[str]:
    """The known names matching the shell-style `pattern`, sorted (timm's `list_models`)."""
    return sorted(set(fnmatch.filter(known_names(), pattern)))


def kinds() -> dict[str, list[str]]:
    """What is registered: the model names, the family names and the composite kinds."""
    _load_builtins()
    return {"models": list(_MODELS), "families": list(_FAMILIES), "composites": list(_COMPOSITES)}


def unknown_arch(arch: str) -> UsageError:
    hints = difflib.get_close_matches(arch, known_names(), n=3, cutoff=0.6)
    suggestion = f"; did you mean {', '.join(hints)}?" if hints else "; see `timm.list_models()` or use medlite_dsconv"
    return UsageError(f"unknown architecture {arch!r}{suggestion}")


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# -- names of the built-in composites (light: distill.config and the stages build them) --------


def ensemble_arch(members: list[str]) -> str:
    """The architecture name of an ensemble of `members` (what `create` builds back)."""
    return call_arch(ENSEMBLE, *members)


def fused_arch(arch: str) -> str:
    """The architecture name of `arch` with its stages fused (`fused(arch)`); an arch already fused is
    returned as it is (fusing the fused model again would add nothing but a second head)."""
    tree = parse_arch(arch)
    return arch if tree.composite and tree.name == FUSED else call_arch(FUSED, arch)

"""Options declared once, on a dataclass: command-line flags and keyword checks derived from its fields.

A typed config (``CalibrationSpec``, ``EngineConfig``, ...) is the one declaration of its options; the command
line and the Python facade derive theirs from it, so a new field is reachable everywhere without editing either::

    @dataclass(frozen=True)
    class Spec:
        learned_l2: float = field(default=1e-3, metadata={"help": "L2 penalty of the learned scores"})
        token_reduce: Literal["min", "mean"] = field(default="min", metadata={"help": "..."})

    add_options(parser, Spec)            # --learned-l2 LEARNED_L2, --token-reduce {min,mean}
    Spec(**given(parser.parse_args(argv), Spec))
    Spec(**options_for(keywords, Spec, where="summon.thing")[0])   # unknown keywords: "did you mean ..."

**Flags.** A field's flag is its name with dashes (``learned_l2`` -> ``--learned-l2``, after an optional
``prefix``); its type comes from the annotation: ``str``, ``int``, ``float``, ``Literal[...]`` (the choices),
``X | None`` (optional: None is the default, never typed), ``tuple[X, ...]`` or ``list[X]`` (one or more values),
and ``bool`` (default False: ``--name`` turns it on; default True: ``--no-name`` turns it off). ``metadata`` holds
``help`` (required), ``choices`` (where the annotation has none), ``metavar``, ``flag`` (another flag name) and
``cli`` (False: no flag is derived, because hand-declared flags set the field; ``flag`` then names them, a string
or a tuple, for :func:`flags` and the tests that check every field is reachable).

**Given, not guessed.** Every derived flag has ``default=argparse.SUPPRESS``: the namespace holds exactly the flags
the user gave, :func:`given` returns them as field values, and the dataclass's own defaults fill in the rest —
declared once, and shown in ``--help`` from there. A value is checked as it is parsed, by building the dataclass
with that one field, so the dataclass's ``__post_init__`` is the one validation and its message comes back as an
argparse error naming the flag (``argument --learned-l2: must be a finite number >= 0, got -1.0``).

Stdlib only (it sits in ``core``): no torch, so building a parser stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from summon.core.registry import suggest

__all__ = ["above", "add_options", "at_least", "check_value", "flags", "given", "number", "options_for"]

_SCALARS = (str, int, float, bool)


# --- numbers that argparse refuses before anything runs ---------------------------------------------------------


def number(kind: type, minimum: float = -math.inf, *, inclusive: bool = True,
           maximum: float = math.inf) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` (int or float) from ``minimum`` to ``maximum`` (``inclusive`` of the
    minimum), so that a value that cannot be meant is refused before anything loads or runs."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if kind is int else ''}number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'more than'} {minimum}, got {text}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text}")
        return value

    return parse


def at_least(minimum: float, maximum: float = math.inf) -> Callable[[str], Any]:
    """An argparse type: a finite number (whole when ``minimum`` is an int) from ``minimum`` to ``maximum``."""
    return number(int if isinstance(minimum, int) else float, minimum, maximum=maximum)


def above(minimum: float) -> Callable[[str], Any]:
    """An argparse type: a finite number greater than ``minimum``."""
    return number(float, minimum, inclusive=False)


# --- flags from fields ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What a field's annotation means on the command line."""

    kind: type  # str, int, float or bool: the type of one value
    choices: tuple[Any, ...] | None
    container: type | None  # tuple or list: one or more values


def _shape(owner: type, f: dataclasses.Field) -> _Shape:
    hint = get_type_hints(owner)[f.name]
    if get_origin(hint) in (Union, types.UnionType):  # X | None: optional X
        members = [a for a in get_args(hint) if a is not type(None)]
        if len(members) == 1:
            hint = members[0]
    container = None
    if get_origin(hint) in (tuple, list):
        args = get_args(hint)
        if get_origin(hint) is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            raise TypeError(f"{owner.__name__}.{f.name}: a tuple option is tuple[X, ...], got {hint!r}")
        container, hint = get_origin(hint), args[0]
    choices = f.metadata.get("choices")
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        hint = type(choices[0])
    if hint not in _SCALARS or (hint is bool and container is not None):
        raise TypeError(f"{owner.__name__}.{f.name}: no flag for a field of type {hint!r}; give it "
                        "metadata={'cli': False} and a flag of its own")
    return _Shape(hint, None if choices is None else tuple(choices), container)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _derived(f: dataclasses.Field) -> bool:
    return f.init and f.metadata.get("cli", True) is not False


def _dest(prefix: str, name: str) -> str:
    return f"{prefix.replace('-', '_')}_{name}" if prefix else name


def _flag(owner: type, f: dataclasses.Field, prefix: str) -> str:
    if "flag" in f.metadata:
        return f.metadata["flag"]
    stem = f"{prefix}-{f.name}" if prefix else f.name
    if get_type_hints(owner)[f.name] is bool and _default(f) is True:
        stem = f"no-{stem}"
    return "--" + stem.replace("_", "-")


def flags(owner: type, *, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Every field of ``owner`` -> the flags that set it on the command line: its derived flag, or for a field
    with ``cli: False`` the hand-declared ones its ``flag`` metadata names (none: unreachable)."""
    out = {}
    for f in dataclasses.fields(owner):
        if _derived(f):
            out[f.name] = (_flag(owner, f, prefix),)
        else:
            named = f.metadata.get("flag", ())
            out[f.name] = (named,) if isinstance(named, str) else tuple(named)
    return out


def _help(owner: type, f: dataclasses.Field, shape: _Shape) -> str:
    text = f.metadata.get("help")
    if not text:
        raise TypeError(f"{owner.__name__}.{f.name}: an option needs metadata={{'help': ...}}")
    if shape.choices and f.metadata.get("metavar"):  # the metavar hides the choices: name them
        text = f"{text}; {f.metadata['metavar']}: {', '.join(map(str, shape.choices))}"
    text = text.replace("%", "%%")  # argparse formats help with %
    default = _default(f)
    if shape.kind is bool:
        return text if default is False else f"{text} (default: on; this flag turns it off)"
    if default is None or default is dataclasses.MISSING:
        return text
    shown = " ".join(map(str, default)) if isinstance(default, tuple | list) else str(default)
    return f"{text} (default: {shown.replace('%', '%%')})"


class _FieldAction(argparse.Action):
    """Stores one field's value (a tuple or list for several) once building the dataclass with it succeeds; its
    ``__post_init__`` message, less the leading field name, is the argparse error."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, owner: type, field_name: str,
                 collect: type | None = None, **kwargs: Any):
        self.owner, self.field_name, self.collect = owner, field_name, collect  # argparse sets .container
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        value = self.const if self.nargs == 0 else self.collect(values) if self.collect else values
        problem = check_value(self.owner, self.field_name, value)
        if problem:
            raise argparse.ArgumentError(self, problem)
        setattr(namespace, self.dest, value)


def check_value(owner: type, name: str, value: Any) -> str | None:
    """Why ``owner(name=value)`` is refused (its message, the leading field name dropped), or None when it is
    built, or cannot be built from one field (another field has no default)."""
    if any(_default(f) is dataclasses.MISSING for f in dataclasses.fields(owner) if f.init and f.name != name):
        return None
    try:
        owner(**{name: value})
    except (TypeError, ValueError) as err:
        text = str(err)
        return text[len(name) + 1:] if text.startswith(f"{name} ") else text
    return None


def add_options(parser: Any, owner: type, *, prefix: str = "") -> None:
    """Add a flag for every field of the dataclass ``owner`` (but those with ``cli: False``) to ``parser`` (an
    ``ArgumentParser`` or an argument group); ``prefix`` goes before each flag and dest (``controller`` ->
    ``--controller-window``, dest ``controller_window``). See the module docstring.

    Raises:
        TypeError: a field without ``help`` metadata, or of a type no flag can carry (a programming error).
    """
    for f in dataclasses.fields(owner):
        if not _derived(f):
            continue
        shape = _shape(owner, f)
        common = {"dest": _dest(prefix, f.name), "default": argparse.SUPPRESS, "help": _help(owner, f, shape),
                  "action": _FieldAction, "owner": owner, "field_name": f.name}
        if shape.kind is bool:
            parser.add_argument(_flag(owner, f, prefix), nargs=0, const=not _default(f), **common)
            continue
        flag = _flag(owner, f, prefix)
        metavar = f.metadata.get("metavar") or (None if shape.choices else flag[2:].replace("-", "_").upper())
        parser.add_argument(flag, type=_parse(shape.kind), choices=shape.choices, metavar=metavar,
                            nargs="+" if shape.container else None, collect=shape.container, **common)


def _parse(kind: type) -> Callable[[str], Any]:
    return str if kind is str else number(kind)


def given(args: argparse.Namespace, owner: type, *, prefix: str = "") -> dict[str, Any]:
    """The fields of ``owner`` whose flags the user gave (added by :func:`add_options`), by field name."""
    out = {}
    for f in dataclasses.fields(owner):
        dest = _dest(prefix, f.name)
        if _derived(f) and dest in args:
            out[f.name] = getattr(args, dest)
    return out


# --- keyword options of the facade ------------------------------------------------------------------------------


def options_for(options: Mapping[str, Any], *owners: type, where: str, set_by: Mapping[str, str] | None = None,
                also: Iterable[str] = (), error: type[Exception] = TypeError) -> tuple[dict[str, Any], ...]:
    """``options`` (keyword arguments) split by the dataclass whose field each names: one dict per owner, in
    order (a name two owners share goes to the first).

    Args:
        options: the keywords given.
        owners: the dataclasses whose fields are the options.
        where: the function or file that takes them, for the message (``summon.calibrate``).
        set_by: fields not taken as options -> how they are given instead (``{"rule": "budget=, max_drop=..."}``).
        also: the caller's other keywords, offered in a "did you mean" too.
        error: the exception raised (TypeError for Python keywords, ValueError for a config file's keys).

    Raises:
        ``error``: for a name no owner has (``unknown option 'x'. Did you mean 'y'?``) or one in ``set_by``.
    """
    set_by = set_by or {}
    names = [[f.name for f in dataclasses.fields(owner) if f.init and f.name not in set_by] for owner in owners]
    known = [n for group in names for n in group]
    out: tuple[dict[str, Any], ...] = tuple({} for _ in owners)
    for name, value in options.items():
        if name in set_by:
            raise error(f"{where}: {name!r} is not an option here; it is set by {set_by[name]}")
        home = next((i for i, group in enumerate(names) if name in group), None)
        if home is None:
            offered = sorted({*known, *also})
            raise error(f"{where}: unknown option {name!r}.{suggest(name, offered)} Options: {', '.join(offered)}")
        out[home][name] = value
    return out

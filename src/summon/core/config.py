"""Typed configuration: dataclasses are the truth, YAML is their serialization.

A recipe is read with :func:`load_yaml`, patched with :func:`apply_overrides` (``a.b=3`` strings from the
command line) and turned into a typed dataclass tree by :func:`from_dict`, which validates everything in
one pass and raises a single :class:`ConfigError` listing every problem by the key path the user wrote,
e.g. ``train.lr: expected a number, got 'abc' (str)``. :func:`to_dict` and :func:`dump_yaml` go back.

Two kinds of field choose their dataclass from the data:

* a **tagged union**, ``Annotated[A | B | C, Tagged("kind")]``: the member is the one whose ``kind`` field is
  ``Literal`` of the value given (``model: {kind: ngram, ...}``); a key of another member is reported as
  ``model.first: unknown key for kind 'ngram' (...)``;
* a field **chosen by a sibling**, ``field(metadata=chosen_by("method", lookup))``: its dataclass is
  ``lookup(value of the sibling)``, e.g. ``method_args`` typed by ``method``; absent, it is built from ``{}``
  so every default is filled in.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import reprlib
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

_FAIL = object()  # returned by converters after they have recorded an error
_NONE_TYPE = type(None)
_CHOSEN_BY = "summon.core.config.chosen_by"


@dataclasses.dataclass(frozen=True)
class Tagged:
    """Marks a union of dataclasses as discriminated by one key: ``Annotated[A | B, Tagged("kind")]``.

    Each member declares the key as a ``Literal`` of its own tag value(s), with that value as the default.

    Attributes:
        key: The key whose value selects the member.
        default: The tag used when the data leaves the key out (None: the key is required).
    """

    key: str = "kind"
    default: str | None = None


def chosen_by(key: str, lookup: Callable[[Any], type]) -> dict[str, Any]:
    """Field metadata: the field's dataclass is ``lookup(<value of sibling field key>)``.

    Use as ``field(default=None, metadata=chosen_by("method", lambda name: METHODS.get(name).config_cls))``.
    ``lookup`` raises ``ValueError`` for a value it does not know; the message is reported at ``key``.
    """
    return {_CHOSEN_BY: (key, lookup)}


def tagged_members(union: Any) -> tuple[Tagged, dict[str, type]]:
    """The :class:`Tagged` marker of ``Annotated[A | B, Tagged(...)]`` and its members by tag value.

    Raises:
        TypeError: If ``union`` is not such an annotation (a programming error).
    """
    if get_origin(union) is not Annotated:
        raise TypeError(f"expected Annotated[A | B, Tagged(...)], got {union!r}")
    inner, *extras = get_args(union)
    tags = [e for e in extras if isinstance(e, Tagged)]
    if not tags:
        raise TypeError(f"{union!r} has no Tagged(...) marker")
    tag = tags[0]
    members: dict[str, type] = {}
    for member in get_args(inner) or (inner,):
        hint = get_type_hints(member).get(tag.key)
        if not (dataclasses.is_dataclass(member) and get_origin(hint) is Literal):
            raise TypeError(f"{member!r}: a member of a tagged union needs a field {tag.key}: Literal[...]")
        for value in get_args(hint):
            members[value] = member
    return tag, members


def unknown_member_key(key: str, tag_value: str, member: type, members: dict[str, type],
                       tag_key: str = "kind") -> str:
    """The message for a key that member ``tag_value`` does not take (naming the members that do)."""
    fields = [f.name for f in dataclasses.fields(member) if f.init]
    owners = [t for t, m in members.items() if key in {f.name for f in dataclasses.fields(m) if f.init}]
    if owners:
        hint = f"'{key}' belongs to {' and '.join(repr(o) for o in owners)}; fields of {tag_value!r}: {', '.join(fields)}"
    else:
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"fields: {', '.join(fields)}"
    return f"unknown key for {tag_key} {tag_value!r} ({hint})"


class ConfigError(ValueError):
    """One or more configuration problems, reported together.

    Attributes:
        errors: One message per problem, each starting with the key path it concerns.
        source: Where the configuration came from (a file name, "command line", ...).
    """

    def __init__(self, errors: Sequence[str], source: str = "config") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        n = len(self.errors)
        header = f"{n} problem{'' if n == 1 else 's'} in {self.source}:"
        return "\n".join([header, *(f"  {e}" for e in self.errors)])

    def __reduce__(self):  # keep it picklable despite the custom __init__
        return (type(self), (self.errors, self.source))


def from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "config") -> T:
    """Build a (possibly nested) dataclass from plain dicts and lists, validating every field.

    Args:
        cls: The dataclass type to build.
        data: Plain data, e.g. from ``yaml.safe_load``.
        source: Named in the error header, e.g. the YAML file name.

    Returns:
        The constructed dataclass instance.

    Raises:
        ConfigError: Listing every problem found anywhere in the tree.
        TypeError: If ``cls`` is not a dataclass type (a programming error).
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    errors: list[str] = []
    obj = _build(cls, data, "", errors)
    if errors:
        raise ConfigError(errors, source=source)
    return obj


def _where(path: str) -> str:
    return path or "<top level>"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 50, 50
_SHORT.maxtuple = _SHORT.maxlist = _SHORT.maxdict = _SHORT.maxset = 4


def _describe(value: Any) -> str:
    """A value for a message, at most ~60 characters: a bounded repr (a few items, a few levels), never the whole
    of a large or deeply nested value."""
    text = _SHORT.repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Annotated:
        inner = get_args(tp)[0]
        return " or ".join(_type_name(m) for m in get_args(inner)) if get_args(inner) else _type_name(inner)
    if tp is _NONE_TYPE:
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return repr(tp).replace("typing.", "")


def _bad(errors: list[str], path: str, expected: str, value: Any) -> object:
    errors.append(f"{_where(path)}: expected {expected}, got {_describe(value)}")
    return _FAIL


def _build(cls: type, data: Any, path: str, errors: list[str],
           unknown: Callable[[str], str] | None = None) -> Any:
    """Convert a mapping into ``cls``; construct it (running ``__post_init__``) only if all went well.

    ``unknown(key)`` words the error for a key ``cls`` does not have (default: "unknown key (did you mean ...)").
    """
    if not isinstance(data, Mapping):
        return _bad(errors, path, f"a mapping for {cls.__name__}", data)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls, include_extras=True)
    n_before = len(errors)
    for key in data:
        if key not in fields:
            message = unknown(str(key)) if unknown else f"unknown key{_suggest(str(key), fields)}"
            errors.append(f"{_where(_join(path, key))}: {message}")
    kwargs = {}
    chosen = {name: f.metadata[_CHOSEN_BY] for name, f in fields.items() if _CHOSEN_BY in f.metadata}
    for name, field in fields.items():
        if name in chosen:
            continue
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(path, name), errors)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            errors.append(f"{_where(_join(path, name))}: required key missing")
    for name, (key, lookup) in chosen.items():
        if key not in kwargs or kwargs[key] is _FAIL:
            continue  # the sibling's own error is already reported
        try:
            tp = lookup(kwargs[key])
        except ValueError as exc:
            errors.append(f"{_where(_join(path, key))}: {exc}")
            continue
        value = data.get(name)
        kwargs[name] = _convert(tp, {} if value is None else value, _join(path, name), errors)
    if len(errors) > n_before:
        return _FAIL
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        errors.extend(_check_errors(cls, str(exc), path, list(fields)))
        return _FAIL


def _check_errors(cls: type, message: str, path: str, fields: list[str]) -> list[str]:
    """A dataclass check's message as errors: under each field's own key when every part of it (parts joined
    by "; ") starts with "FIELD: ", else under the section as one."""
    parts = message.split("; ")
    keyed = [part.partition(": ") for part in parts]
    if all(sep and name in fields for name, sep, _ in keyed):
        return [f"{_where(_join(path, name))}: {rest}" for name, _, rest in keyed]
    return [f"{_where(path)}: invalid {cls.__name__}: {message}"]


def _suggest(key: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(names), n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid keys: {', '.join(names)})"


def _allows_none(tp: Any) -> bool:
    if get_origin(tp) is Annotated:
        return _allows_none(get_args(tp)[0])
    if get_origin(tp) not in (Union, types.UnionType, Literal):
        return tp is _NONE_TYPE
    return any(a is _NONE_TYPE or a is None for a in get_args(tp))


def _convert(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    """Check ``value`` against annotation ``tp``; return the converted value or ``_FAIL``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if value is None:
        if _allows_none(tp):
            return None
        errors.append(f"{_where(path)}: null is not allowed here (expected {_type_name(tp)})")
        return _FAIL
    if origin is Annotated:
        if any(isinstance(extra, Tagged) for extra in get_args(tp)[1:]):
            return _convert_tagged(tp, value, path, errors)
        return _convert(get_args(tp)[0], value, path, errors)
    if origin in (Union, types.UnionType):
        return _convert_union(tp, value, path, errors)
    if origin is Literal:
        return _convert_literal(tp, value, path, errors)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, path, errors)
    if (origin or tp) in (list, tuple):
        return _convert_sequence(tp, value, path, errors)
    if (origin or tp) is dict:
        return _convert_mapping(tp, value, path, errors)
    if tp in _SCALARS:
        return _SCALARS[tp](value, path, errors)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    return _bad(errors, path, _type_name(tp), value)


def _convert_union(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    members = [a for a in get_args(tp) if a is not _NONE_TYPE]
    if len(members) == 1:  # plain Optional: report the member's own, more precise, errors
        return _convert(members[0], value, path, errors)
    for member in members:
        trial: list[str] = []
        out = _convert(member, value, path, trial)
        if not trial:
            return out
    return _bad(errors, path, " or ".join(_type_name(m) for m in members), value)


def _convert_tagged(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    """Pick the member of a tagged union by its tag key, then build it (keys of other members named as such)."""
    tag, members = tagged_members(tp)
    kinds = ", ".join(members)
    if not isinstance(value, Mapping):
        return _bad(errors, path, f"a mapping with '{tag.key}' (one of {kinds})", value)
    chosen = value.get(tag.key, tag.default)
    if chosen is None:
        errors.append(f"{_where(_join(path, tag.key))}: required key missing (one of {kinds})")
        return _FAIL
    if not isinstance(chosen, str) or chosen not in members:
        close = difflib.get_close_matches(str(chosen), list(members), n=1)
        guess = f" (did you mean '{close[0]}'?)" if close else ""
        errors.append(f"{_where(_join(path, tag.key))}: unknown {tag.key} {chosen!r}{guess}; {tag.key}s: {kinds}")
        return _FAIL
    member = members[chosen]
    return _build(member, value, path, errors,
                  unknown=lambda key: unknown_member_key(key, chosen, member, members, tag.key))


def _convert_literal(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    allowed = get_args(tp)
    for option in allowed:
        if value == option and type(value) is type(option):
            return option
    return _bad(errors, path, "one of " + ", ".join(repr(a) for a in allowed), value)


def _convert_sequence(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    container = get_origin(tp) or tp
    args = get_args(tp)
    if not isinstance(value, (list, tuple)):
        return _bad(errors, path, "a list", value)
    if container is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            return _bad(errors, path, f"a list of {len(args)} items", value)
        item_types = list(args)
    else:
        item_types = [args[0] if args else Any] * len(value)
    n_before = len(errors)
    items = [
        _convert(t, v, f"{path}[{i}]", errors) for i, (t, v) in enumerate(zip(item_types, value, strict=True))
    ]
    return _FAIL if len(errors) > n_before else container(items)


def _convert_mapping(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    key_type, value_type = get_args(tp) or (Any, Any)
    if not isinstance(value, Mapping):
        return _bad(errors, path, "a mapping", value)
    n_before = len(errors)
    out = {
        _convert(key_type, k, _join(path, k), errors): _convert(value_type, v, _join(path, k), errors)
        for k, v in value.items()
    }
    return _FAIL if len(errors) > n_before else out


def _to_int(value: Any, path: str, errors: list[str]) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _bad(errors, path, "an integer", value)
    if isinstance(value, float) and not value.is_integer():
        return _bad(errors, path, "an integer", value)
    return int(value)


def _to_float(value: Any, path: str, errors: list[str]) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # PyYAML reads `5e-5` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    return _bad(errors, path, "a number", value)


def _exactly(kind: type, expected: str):
    def check(value: Any, path: str, errors: list[str]) -> Any:
        return value if isinstance(value, kind) else _bad(errors, path, expected, value)

    return check


_SCALARS = {
    int: _to_int,
    float: _to_float,
    bool: _exactly(bool, "true or false"),
    str: _exactly(str, "a string"),
}


def to_dict(obj: Any) -> dict[str, Any]:
    """Turn a dataclass instance into nested plain dicts and lists (tuples become lists).

    Only ``init=True`` fields are included, so ``from_dict(type(obj), to_dict(obj)) == obj``.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict needs a dataclass instance, got {obj!r}")
    return _plain(obj)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def apply_overrides(
    data: Mapping[str, Any], overrides: Sequence[str], *, source: str = "command line"
) -> dict[str, Any]:
    """Return a deep copy of ``data`` with ``a.b.c=value`` overrides applied (values parsed as YAML).

    Raises:
        ConfigError: Listing every malformed override (no ``=``, empty key part, unparsable value,
            or a path that runs through a value that is not a mapping).
    """
    result = copy.deepcopy(dict(data))
    errors = [msg for item in overrides if (msg := _apply_one(result, item))]
    if errors:
        raise ConfigError(errors, source=source)
    return result


def _apply_one(data: dict[str, Any], item: str) -> str | None:
    """Apply one override in place; return an error message instead of raising."""
    key, sep, raw = item.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or not all(parts):
        return f"{item!r}: expected key=value, e.g. train.lr=3e-4 (dots separate nested keys)"
    try:
        value = safe_yaml(raw)
    except yaml.YAMLError as exc:
        return f"{item!r}: cannot parse the value as YAML ({getattr(exc, 'problem', None) or exc})"
    except ValueError as exc:
        return f"{item!r}: {exc}"
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where, sub = ".".join(parts[: i + 1]), parts[i + 1]
            return f"{item!r}: '{where}' holds {_describe(child)}, not a mapping, so it has no key {sub!r}"
        node = child
    node[parts[-1]] = value
    return None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML file that holds a mapping of keys to values.

    Anchors and aliases are refused, before anything is built, when they would expand the file beyond
    :data:`MAX_YAML_VALUES` values (a "billion laughs") or refer to themselves (:func:`safe_yaml`).

    Raises:
        FileNotFoundError: If the file does not exist.
        ConfigError: On non-UTF-8 bytes, a YAML syntax error (with 1-based line and column), aliases that expand
            too far or refer to themselves, nesting too deep to read, or a top level that is not a mapping.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"config file not found: {path} (check the path; relative paths start at {Path.cwd()})"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (bad byte at offset {exc.start}); save the file as UTF-8"
        raise ConfigError([problem], source=str(path)) from None
    try:
        loaded = safe_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc)], source=str(path)) from None
    except ValueError as exc:
        raise ConfigError([str(exc)], source=str(path)) from None
    if not isinstance(loaded, dict):
        held = "nothing (the file is empty)" if loaded is None else f"a {type(loaded).__name__}"
        problem = f"the file must hold a mapping of keys to values (like `lr: 0.001`), not {held}"
        raise ConfigError([problem], source=str(path))
    return loaded


MAX_YAML_VALUES = 100_000  # values (scalars, lists, mappings) a YAML text may expand to through its aliases


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing before anything is built what would cost far more than the text: aliases
    that expand to more than :data:`MAX_YAML_VALUES` values (nested anchors, a "billion laughs"), an alias inside
    the value it names (a structure that contains itself), and nesting too deep for the parser.

    Raises:
        yaml.YAMLError: On a syntax error.
        ValueError: Naming the line (1-based) of the aliased value that grows too large, or of the alias that refers
            to itself; never printing the expanded value.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except RecursionError:
        raise ValueError("the YAML is nested too deeply to read (lists or mappings inside one another hundreds of "
                         "levels deep); write it flatter") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node) -> None:
    """Count the values the node graph expands to (an aliased node counts each time it is used), without expanding
    it: each distinct node is visited once (depth-first, iteratively), so the count costs the size of the text."""
    sizes: dict[int, int] = {}
    started: set[int] = set()  # nodes begun and not finished: the current node's ancestors
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        children = _yaml_children(node)
        if finished:
            started.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_YAML_VALUES:
                raise ValueError(f"line {node.start_mark.line + 1}: anchors and aliases (&name, *name) expand this "
                                 f"value to {sizes[key]:,} values, more than the {MAX_YAML_VALUES:,} summon reads "
                                 "(nested aliases, a \"billion laughs\"?); write the values out, or alias less")
            continue
        if key in sizes:
            continue
        started.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in started:
                raise ValueError(f"line {child.start_mark.line + 1}: an alias refers to the value that holds it (a "
                                 f"value containing itself, used at line {node.start_mark.line + 1}); remove the alias")
            if id(child) not in sizes:
                stack.append((child, False))


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"YAML syntax error: {problem}"
    return f"line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: {problem}"


def dump_yaml(data: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``data`` as YAML in its own key order (tuples as lists), creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True, default_flow_style=False)
    path.write_text(text, encoding="utf-8")

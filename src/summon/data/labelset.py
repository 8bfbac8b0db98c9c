"""How label names compare: one rule for files, declared label sets and a model's labels.

Two names are the same label when they are equal after Unicode NFKC normalisation, removal of invisible format
characters (zero-width space and joiners, BOM, soft hyphen, direction marks) and surrounding whitespace
(:func:`label_key`): an NFD ``café`` and an NFC ``café``, or a full-width ``ｓｐｏｒｔ`` and ``sport``, are one
class. Within one data file or one ``labels:`` list, two spellings of one label are an error naming both with
``repr()`` (so the difference shows); names that differ only in case (``Sports``/``sports``) are an error too,
never merged and never two quiet classes. A class id is written with the ASCII digits ``0-9``; a label that reads
as a number only through other digits (``٣``, ``³``, ``１``) is an error naming its row.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any


def label_key(name: str) -> str:
    """The form in which label names are compared: NFKC, no format (``Cf``) characters, no surrounding space."""
    visible = "".join(c for c in str(name) if unicodedata.category(c) != "Cf")
    return unicodedata.normalize("NFKC", visible).strip()


def show(name: Any) -> str:
    """A label name for a message: as written when plain, else its ``repr()`` (so invisible differences show)."""
    text = str(name)
    plain = text == label_key(text) and text.isprintable() and text.isascii()
    return text if plain else repr(text)


def spell(name: str) -> str:
    """``repr(name)``, and for a name with non-ASCII characters its ``ascii()`` beside it, so that two spellings
    that print alike (NFC and NFD ``café``) differ visibly: ``'café' (ascii 'cafe\\u0301')``."""
    return repr(name) if repr(name).isascii() else f"{name!r} (ascii {name!a})"


def show_set(names: Iterable[Any], limit: int = 12) -> str:
    """``[a, b, ...]`` for a message, at most ``limit`` names."""
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return f"[{', '.join(show(n) for n in names[:limit])}{more}]"


def same_labels(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Whether two label lists name the same classes in the same order, compared by :func:`label_key`."""
    return len(a) == len(b) and all(label_key(x) == label_key(y) for x, y in zip(a, b, strict=True))


def odd_numeral(text: str) -> str | None:
    """For a label that reads as an integer only after normalisation (``٣``, ``³``, ``１``, ``1\\u200b``): the
    integer's ASCII spelling; None for plain ``0-9`` digits (surrounding spaces allowed) and for names."""
    stripped = text.strip()
    if stripped.removeprefix("-").isascii() and stripped.removeprefix("-").isdigit():
        return None
    key = label_key(text)
    digits = key.removeprefix("-")
    if not digits or not all(c.isdigit() for c in digits):
        return None
    try:
        value = "".join(str(unicodedata.digit(c)) for c in digits)
    except (TypeError, ValueError):
        return None
    return ("-" if key.startswith("-") else "") + value


def refuse_odd_numeral(value: Any, where: str, what: str = "label") -> None:
    """Refuse a label written as a number with digits other than ASCII ``0-9``, naming ``where`` (FILE:LINE)."""
    if not isinstance(value, str):
        return
    plain = odd_numeral(value)
    if plain is None:
        return
    odd = sorted({c for c in value if not ("0" <= c <= "9") and not c.isspace() and c != "-"})
    names = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed')}" for c in odd)
    raise ValueError(f"{where}: {what} {value!r} reads as the class id {plain} only through other characters "
                     f"({names}); write the id with the digits 0-9 ({plain}), or write a class name.")


def refuse_lookalikes(spellings: Iterable[tuple[str, str]], what: str) -> None:
    """Refuse two spellings of one label: ``spellings`` are ``(name, where)`` pairs in order (``where`` is the
    FILE:LINE of the name's first row, or a position in a list); ``what`` says where they come from."""
    first: dict[str, tuple[str, str]] = {}  # spelling as written (stripped) -> (spelling, where)
    for name, where in spellings:
        first.setdefault(name.strip(), (name.strip(), where))
    by_key: dict[str, tuple[str, str]] = {}
    by_case: dict[str, tuple[str, str]] = {}
    for name, where in first.values():
        key = label_key(name)
        if key in by_key:
            other, at = by_key[key]
            raise ValueError(f"{what}: labels {spell(other)} ({at}) and {spell(name)} ({where}) differ only by Unicode "
                             "normalisation, width or invisible characters, so they are one label written two ways; "
                             "write it one way.")
        by_key[key] = (name, where)
        folded = key.casefold()
        if folded in by_case:
            other, at = by_case[folded]
            raise ValueError(f"{what}: labels {spell(other)} ({at}) and {spell(name)} ({where}) differ only in case; labels are "
                             "case-sensitive, so this would make two classes. Write one label one way (or, if they are "
                             "two classes, give them names that differ by more than case).")
        by_case[folded] = (name, where)


def case_hint(name: str, names: Sequence[str]) -> str:
    """`` (differs only in case from 'X')`` when ``name`` matches one of ``names`` but for case, else ``""``."""
    folded = label_key(name).casefold()
    match = next((n for n in names if label_key(n).casefold() == folded), None)
    return f" ({name!r} differs only in case from {match!r})" if match is not None else ""

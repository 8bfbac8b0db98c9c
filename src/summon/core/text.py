"""Checks on text that every entry point shares (no torch, so the command-line parser can use them)."""

from __future__ import annotations


def check_unicode(text: str, where: str) -> str:
    """``text`` if it is valid Unicode (it encodes as UTF-8); else a ``ValueError`` naming ``where`` and the
    character. A lone surrogate comes from a JSON escape such as ``"\\ud800"``, or from bytes that are not UTF-8
    read with ``errors="surrogateescape"`` (as Python reads command-line arguments and a text-mode standard
    input): the tokenizer cannot take it."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(text[err.start])
        what = (f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8" if 0xDC80 <= code <= 0xDCFF
                else f"a lone surrogate U+{code:04X}")
        raise ValueError(f"{where}: invalid Unicode at character {err.start + 1}: {what}; give UTF-8 text "
                         "(re-save the file as UTF-8, or decode bytes with .decode('utf-8'))") from None
    return text

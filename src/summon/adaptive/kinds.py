"""The kinds of staged predictor, by what their saved manifest says: one small registry built from code.

Every predictor is a kind: a plain model is the one-stage kind ``plain`` (:mod:`summon.adaptive.plain`), so
:func:`load` returns a :class:`~summon.adaptive.staged.StagedBase` for any folder, Hugging Face classifier or
``hf:`` id, and no layer above asks "plain or staged?". A new kind registers a :class:`StagedKind` here and
loads, calibrates, evaluates and serves like the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from summon.adaptive.cascade import CASCADE_FORMAT, CascadePredictor, load_cascade
from summon.adaptive.early_exit import EarlyExitPredictor
from summon.adaptive.plain import PlainPredictor
from summon.adaptive.progressive import ProgressivePredictor, is_progressive, load_progressive
from summon.adaptive.staged import StagedBase
from summon.adaptive.token_exit import TokenExitPredictor
from summon.core.registry import Registry
from summon.predictors.huggingface import load_plain
from summon.predictors.predictor import Predictor, load_predictor
from summon.predictors.saved import FORMAT, read_json_manifest


@dataclass(frozen=True)
class StagedKind:
    name: str
    cls: type
    matches: Callable[[dict[str, Any]], bool]  # does this manifest hold this kind?
    load: Callable[..., Any]  # load(directory, manifest, device=...) -> predictor


def _load_exits(directory: Path, manifest: dict[str, Any], *, device: Any = None) -> EarlyExitPredictor:
    plain = load_predictor(directory, device=device)
    cls = TokenExitPredictor if plain.task == "token_classification" else EarlyExitPredictor
    return cls(plain.model, plain.featurizer, plain.task, plain.labels, plain.manifest, path=directory)


def _exits_type(manifest: dict[str, Any]) -> bool:
    arch = manifest.get("architecture")
    return isinstance(arch, dict) and arch.get("type") == "exits"


def _has_exits(manifest: dict[str, Any], tagger: bool) -> bool:
    arch = manifest.get("architecture")
    return manifest.get("format") == FORMAT and _exits_type(manifest) and (
        (arch.get("task") == "token_classification") == tagger)


def _load_plain(directory: Path | str, manifest: dict[str, Any] | None = None, *, device: Any = None) -> PlainPredictor:
    """A summon predictor folder, a Hugging Face classifier folder or ``hf:ID`` as the one-stage kind."""
    return PlainPredictor.of(load_plain(directory, device=device))


KINDS: Registry[StagedKind] = Registry("staged predictor kind")
KINDS.register("plain", StagedKind(
    "plain", PlainPredictor, lambda m: m.get("format") == FORMAT and not _exits_type(m), _load_plain))
KINDS.register("early_exit", StagedKind("early_exit", EarlyExitPredictor, lambda m: _has_exits(m, False), _load_exits))
KINDS.register("token_early_exit", StagedKind(
    "token_early_exit", TokenExitPredictor, lambda m: _has_exits(m, True), _load_exits))
KINDS.register("cascade", StagedKind(
    "cascade", CascadePredictor, lambda m: m.get("format") == CASCADE_FORMAT, load_cascade))
KINDS.register("progressive", StagedKind("progressive", ProgressivePredictor, is_progressive, load_progressive))


def staged_kind(manifest: dict[str, Any] | None) -> StagedKind | None:
    """The registered kind whose saved manifest this is, or None (no manifest, or one no kind reads)."""
    if not isinstance(manifest, dict):
        return None
    return next((KINDS.get(name) for name in KINDS if KINDS.get(name).matches(manifest)), None)


def load(path: str | os.PathLike, *, device: Any = None) -> StagedBase:
    """The predictor at ``path`` as its kind: a saved summon predictor of any kind, or (as the one-stage kind) a
    Hugging Face classifier folder or ``hf:HUB_ID`` (:func:`summon.predictors.huggingface.load_plain`, which names what it found when
    it is none of these)."""
    directory = Path(path)
    manifest = read_json_manifest(directory) if directory.is_dir() else None
    kind = staged_kind(manifest)
    if kind is None:
        return _load_plain(path, device=device)
    return kind.load(directory, manifest, device=device)


def as_staged(predictor: Any) -> StagedBase:
    """A predictor object as its kind: a staged one as it is, a plain :class:`~summon.predictors.predictor.Predictor` as the
    one-stage kind (same model, nothing copied).

    Raises:
        TypeError: For anything else, naming what was given.
    """
    if isinstance(predictor, StagedBase):
        return predictor
    if isinstance(predictor, Predictor):
        return PlainPredictor.of(predictor)
    raise TypeError(f"expected a summon predictor (summon.load(...)), got {type(predictor).__name__}")

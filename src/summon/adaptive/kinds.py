"""The kinds of staged predictor, by what their saved manifest says: one small registry built from code.

``summon.load`` asks :func:`staged_kind` which kind a directory holds; a new kind registers a
:class:`StagedKind` here and loads, calibrates, evaluates and serves like the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from summon.adaptive.cascade import CASCADE_FORMAT, CascadePredictor, load_cascade
from summon.adaptive.early_exit import EarlyExitPredictor
from summon.adaptive.progressive import ProgressivePredictor, is_progressive, load_progressive
from summon.adaptive.token_exit import TokenExitPredictor
from summon.predictor import load_predictor
from summon.registry import Registry
from summon.saved import FORMAT


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


def _has_exits(manifest: dict[str, Any], tagger: bool) -> bool:
    arch = manifest.get("architecture")
    return manifest.get("format") == FORMAT and isinstance(arch, dict) and arch.get("type") == "exits" and (
        (arch.get("task") == "token_classification") == tagger)


KINDS: Registry[StagedKind] = Registry("staged predictor kind")
KINDS.register("early_exit", StagedKind("early_exit", EarlyExitPredictor, lambda m: _has_exits(m, False), _load_exits))
KINDS.register("token_early_exit", StagedKind(
    "token_early_exit", TokenExitPredictor, lambda m: _has_exits(m, True), _load_exits))
KINDS.register("cascade", StagedKind(
    "cascade", CascadePredictor, lambda m: m.get("format") == CASCADE_FORMAT, load_cascade))
KINDS.register("progressive", StagedKind("progressive", ProgressivePredictor, is_progressive, load_progressive))


def staged_kind(manifest: dict[str, Any] | None) -> StagedKind | None:
    """The registered kind whose saved manifest this is, or None for a plain predictor (or no manifest)."""
    if not isinstance(manifest, dict):
        return None
    return next((KINDS.get(name) for name in KINDS if KINDS.get(name).matches(manifest)), None)

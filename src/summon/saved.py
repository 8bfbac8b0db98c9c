"""The saved format: one directory per trained model, written atomically and read without unpickling.

Layout::

    manifest.json        task, labels, architecture, featurizer, costs, metrics, file sizes and hashes
    model.safetensors    the weights
    tokenizer/           the Hugging Face tokenizer (encoder models only)

This module knows the format and its integrity checks (sizes and sha256 of every file named in the
manifest); it builds no predictor. A missing, truncated or mismatched file raises a ``ValueError`` naming
the file and what to do.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn
from transformers import AutoTokenizer

from summon._version import __version__
from summon.data.features import NgramFeaturizer, TokenizerFeaturizer

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMAT = "summon-predictor"
FORMAT_VERSION = 1
ENSEMBLE_FORMAT = "summon-progressive"  # a progressive ensemble: members/<k>/ are saved predictors
MANAGED = {"format", "format_version", "summon_version", "task", "labels", "architecture", "featurizer",
           "files", "created", "fingerprint"}


def read_json_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory`` as a dict, or None when it is missing or unreadable (callers explain)."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_predictor(directory: str | Path, model: nn.Module, featurizer: Any, task: str, labels: Sequence[str],
                   architecture: dict[str, Any], *, extra: dict[str, Any] | None = None) -> Path:
    """Write weights, tokenizer and manifest into ``directory`` atomically (a temp folder, then a rename).

    ``extra`` adds manifest keys such as ``metrics``, ``costs`` and ``training``.
    """
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".saving")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_model(unwrap(model), str(staging / WEIGHTS))
    featurizer.save(staging)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "summon_version": __version__,
        "task": task, "labels": list(labels), "architecture": architecture, "featurizer": featurizer.to_config(),
        "files": {WEIGHTS: {"bytes": (staging / WEIGHTS).stat().st_size, "sha256": sha256(staging / WEIGHTS)}},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    (staging / MANIFEST).write_text(json.dumps(jsonable(manifest), indent=2) + "\n", encoding="utf-8")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` into ``directory`` atomically (a temp file, then a rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(jsonable(manifest), indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)
    return directory


def save_ensemble(directory: str | Path, members: Sequence[tuple[str | Path, dict[str, Any]]], task: str,
                  labels: Sequence[str], *, extra: dict[str, Any] | None = None) -> Path:
    """Save a progressive ensemble: each member's predictor folder copied to ``members/<k>/``, and a manifest
    naming them in order with their entries (``alpha``, ``name``...) and weight hashes.

    A member folder already at its place (re-saving in place) is kept as it is.
    """
    directory = Path(directory)
    entries = []
    for k, (source, entry) in enumerate(members):
        target = directory / "members" / str(k)
        if Path(source).resolve() != target.resolve():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        weights = (read_json_manifest(target) or {}).get("files", {}).get(WEIGHTS, {})
        entries.append({**entry, "path": f"members/{k}", "sha256": weights.get("sha256")})
    for stale in sorted((directory / "members").glob("*")):
        if stale.name not in {str(k) for k in range(len(entries))}:
            shutil.rmtree(stale, ignore_errors=True)
    manifest = {**(extra or {}), "format": ENSEMBLE_FORMAT, "format_version": 1, "summon_version": __version__,
                "task": task, "labels": list(labels), "members": entries,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    return write_manifest(directory, manifest)


def update_manifest(directory: str | Path, **entries: Any) -> dict[str, Any]:
    """Merge ``entries`` (e.g. ``metrics=...``, ``costs=...``) into a saved predictor's manifest."""
    path = Path(directory) / MANIFEST
    manifest = read_json_manifest(Path(directory))
    if manifest is None or not str(manifest.get("format", "")).startswith("summon-"):
        manifest = read_manifest(Path(directory))  # raises the message that says what is wrong
    manifest.update(jsonable(entries))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return manifest


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such predictor directory. Train one with `summon train RECIPE.yaml`.")
    if not path.is_file():
        raise ValueError(f"{path}: missing. {directory} is not a saved summon predictor (no manifest.json).")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: unreadable manifest ({err}). The save was interrupted or the file edited; "
                         "re-save the predictor.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        seen = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: not a summon predictor manifest (format {seen!r}).")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {manifest['format_version']} is newer than this summon "
                         f"({__version__}) reads; upgrade summon.")
    return manifest


def check_file(directory: Path, name: str, expected: dict[str, Any]) -> Path:
    path = directory / name
    if not path.is_file():
        raise ValueError(f"{path}: missing. Copy the whole predictor directory, or re-save it.")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise ValueError(f"{path}: {size} bytes but the manifest says {expected['bytes']}: the file is truncated "
                         "or replaced. Copy it again from the original predictor.")
    if sha256(path) != expected["sha256"]:
        raise ValueError(f"{path}: contents do not match the manifest's sha256: the file was changed or belongs to "
                         "another predictor. Copy it again from the original.")
    return path


def load_featurizer(directory: Path, config: dict[str, Any]) -> Any:
    if config.get("kind") == "ngram":
        params = {k: v for k, v in config.items() if k != "kind"}
        return NgramFeaturizer(**params)
    if config.get("kind") == "tokenizer":
        folder = directory / "tokenizer"
        if not folder.is_dir():
            raise ValueError(f"{folder}: missing tokenizer folder. Copy the whole predictor directory.")
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        params = {k: v for k, v in config.items() if k != "kind"}
        return TokenizerFeaturizer(tokenizer, **params)
    raise ValueError(f"{directory / MANIFEST}: unknown featurizer {config.get('kind')!r}.")


def load_weights(model: nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err}). Copy it again.") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    # save_model drops duplicate names of tied tensors; those may be absent from the file.
    missing = [k for k in missing if not is_tied_copy(model, k, state)]
    if missing or unexpected or shapes:
        detail = "; ".join(filter(None, [
            f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
            f"shape mismatch {shapes[:5]}" if shapes else ""]))
        raise ValueError(f"{path}: weights do not fit the architecture in manifest.json ({detail}). "
                         "The weights and manifest come from different models; re-save the predictor.")
    model.load_state_dict(state, strict=False)


def is_tied_copy(model: nn.Module, key: str, state: dict[str, torch.Tensor]) -> bool:
    tensors = model.state_dict(keep_vars=True)
    target = tensors[key]
    return any(other in state and tensors[other] is target for other in tensors if other != key)


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """A file-system-safe version of ``text`` for folder names."""
    return _SAFE_NAME.sub("_", text).strip("_") or "model"

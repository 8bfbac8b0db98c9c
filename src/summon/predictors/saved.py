"""The saved format: one directory per trained model, written atomically and read without unpickling.

Layout::

    manifest.json        task, labels, architecture, featurizer, costs, metrics, file sizes and hashes
    model.safetensors    the weights
    tokenizer/           the Hugging Face tokenizer (encoder models only)

This module knows the format, its schema (:func:`validate_manifest`) and its integrity checks (sizes and
sha256 of every file named in the manifest: the weights and every tokenizer file); it builds the model a
manifest describes but no predictor. A missing, truncated or mismatched file, or a manifest that breaks the
schema, raises a ``ValueError`` naming the file (and the key) and what to do. Predictors saved before every
file was listed name only the weights; what is listed is what is checked. An int8 predictor is saved with its
fp32 weights and a ``quantization`` section that loading applies again (:mod:`summon.models.quantize`).
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

from summon.core.files import follow_umask
from summon.core.version import __version__
from summon.data.features import NgramFeaturizer, TokenizerFeaturizer
from summon.data.spec import TASKS
from summon.models.build import model_from_architecture, outputs
from summon.models.hf import HFTaskModel
from summon.models.member import ComposedMember
from summon.models.quantize import quantization_problems

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMAT = "summon-predictor"
FORMAT_VERSION = 1
ENSEMBLE_FORMAT = "summon-progressive"  # a progressive ensemble: members/<k>/ are saved predictors
MANAGED = {"format", "format_version", "summon_version", "task", "labels", "architecture", "featurizer",
           "files", "created", "fingerprint"}
FEATURIZER_KINDS = (NgramFeaturizer.kind, TokenizerFeaturizer.kind)
# The architecture types summon.models.build.model_from_architecture builds, and the keys each one needs.
ARCHITECTURE_KEYS: dict[str, tuple[str, ...]] = {
    "ngram": ("num_labels", "num_buckets", "embed_dim", "hidden_dim", "dropout"),
    "encoder": ("num_labels", "task", "hf_config", "dropout"),
    "exits": ("num_labels", "task", "hf_config", "dropout", "exit_layers"),
    "hf": ("num_labels", "task", "hf_config"),
    "composed": ("num_labels", "base", "previous_width"),
}
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    """Write weights, tokenizer and manifest into ``directory`` atomically (a temp folder, then a rename), every
    file with the mode the user's umask gives (:func:`~summon.core.files.follow_umask`).

    ``directory`` is replaced when it exists: this is the format's writer, which ``summon train`` uses to keep its
    best model; commands that write where a user points check the destination first
    (:func:`~summon.core.files.check_destination`). ``extra`` adds manifest keys such as ``metrics``, ``costs``
    and ``training``.
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
        "files": file_entries(staging),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    (staging / MANIFEST).write_text(json.dumps(jsonable(manifest), indent=2) + "\n", encoding="utf-8")
    follow_umask(staging)  # safetensors writes its file owner-only; give it the mode the tokenizer files have
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def file_entries(directory: Path) -> dict[str, dict[str, Any]]:
    """Bytes and sha256 of every file under ``directory`` but its manifest, keyed by POSIX relative path."""
    return {path.relative_to(directory).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256(path)}
            for path in sorted(directory.rglob("*")) if path.is_file() and path != directory / MANIFEST}


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
            follow_umask(target)  # a new copy reads as any new file does, whatever the source's modes
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
    """The manifest of a saved predictor, checked against the schema (:func:`validate_manifest`)."""
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
    except RecursionError:
        raise ValueError(f"{path}: unreadable manifest (JSON nested too deeply). The file was edited or replaced; "
                         "restore it from the original predictor.") from None
    except OSError as err:
        raise ValueError(unreadable(path, err)) from None
    return validate_manifest(manifest, path)


def unreadable(path: Path, err: OSError) -> str:
    """The message for a predictor file this process cannot read (permissions, a broken link, a device)."""
    return (f"{path}: cannot be read ({err.strerror or err}). Check that this user may read every file of the "
            "predictor folder (e.g. chmod -R a+rX on it), or copy the predictor somewhere readable.")


def validate_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """``manifest`` if it follows the predictor schema, else one ``ValueError`` naming ``path`` and every bad key.

    Required: ``format``, ``format_version`` (an integer this summon reads), ``task`` (a known task),
    ``labels`` (a non-empty list of distinct strings), ``architecture`` (a dict of a known ``type`` with the
    keys that type needs), ``featurizer`` (a dict of a known ``kind``) and ``files`` (``{relative path:
    {"bytes", "sha256"}}``, the weights among them). Optional: ``quantization`` (a known method, dtype and
    modules: :mod:`summon.models.quantize`). That ``labels`` match the model's outputs is checked once the model
    is built (:func:`check_outputs`).
    """
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        seen = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: not a summon predictor manifest (format {seen!r}).")
    version = manifest.get("format_version")
    if _is_int(version) and version > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {version} is newer than this summon ({__version__}) reads; "
                         "upgrade summon.")
    problems = [*version_problems(version), *header_problems(manifest),
                *architecture_problems(manifest.get("architecture"), "architecture"),
                *featurizer_problems(manifest.get("featurizer")), *files_problems(manifest.get("files")),
                *quantization_problems(manifest.get("quantization"))]
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}. The manifest was edited or written by another tool: "
                         "restore it from the original predictor, or re-save the predictor.")
    return manifest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def version_problems(version: Any) -> list[str]:
    if version is None:
        return ["'format_version' is missing"]
    if not _is_int(version) or version < 1:
        return [f"'format_version' must be a positive integer, got {version!r} ({type(version).__name__})"]
    return []


def header_problems(manifest: dict[str, Any]) -> list[str]:
    """What is wrong with ``task`` and ``labels`` (every saved summon format has both)."""
    problems = []
    task = manifest.get("task")
    if task not in TASKS:
        seen = "missing" if task is None else f"got {task!r}"
        problems.append(f"'task' must be one of {', '.join(TASKS)}, {seen}")
    labels = manifest.get("labels")
    if labels is None:
        problems.append("'labels' is missing")
    elif not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        problems.append(f"'labels' must be a non-empty list of non-empty strings, got {labels!r:.80}")
    elif len(set(labels)) != len(labels):
        twice = sorted({x for x in labels if labels.count(x) > 1})
        problems.append(f"'labels' must be distinct, but {twice} appear more than once")
    return problems


def architecture_problems(arch: Any, key: str) -> list[str]:
    """What is wrong with an ``architecture`` dict (``key`` is where it sits, for the message)."""
    if arch is None:
        return [f"'{key}' is missing"]
    if not isinstance(arch, dict):
        return [f"'{key}' must be a dict, got {type(arch).__name__}"]
    kind = arch.get("type")
    if kind not in ARCHITECTURE_KEYS:
        return [f"'{key}.type' must be one of {', '.join(ARCHITECTURE_KEYS)}, got {kind!r} (a predictor saved by "
                "a newer summon? upgrade summon)"]
    problems = [f"'{key}.{k}' is missing (type {kind!r} needs it)" for k in ARCHITECTURE_KEYS[kind] if k not in arch]
    if "num_labels" in arch and not (_is_int(arch["num_labels"]) and arch["num_labels"] >= 1):
        problems.append(f"'{key}.num_labels' must be a positive integer, got {arch['num_labels']!r}")
    if "hf_config" in arch and not isinstance(arch["hf_config"], dict):
        problems.append(f"'{key}.hf_config' must be a dict, got {type(arch['hf_config']).__name__}")
    if kind == "composed" and "base" in arch:
        problems += architecture_problems(arch["base"], f"{key}.base")
    return problems


def featurizer_problems(config: Any) -> list[str]:
    if config is None:
        return ["'featurizer' is missing"]
    if not isinstance(config, dict):
        return [f"'featurizer' must be a dict, got {type(config).__name__}"]
    if config.get("kind") not in FEATURIZER_KINDS:
        return [f"'featurizer.kind' must be one of {', '.join(FEATURIZER_KINDS)}, got {config.get('kind')!r}"]
    return []


def files_problems(files: Any) -> list[str]:
    """What is wrong with ``files``: relative paths inside the folder, each with ``bytes`` and ``sha256``."""
    if files is None:
        return ["'files' is missing"]
    if not isinstance(files, dict):
        return [f"'files' must be a dict of file entries, got {type(files).__name__}"]
    problems = [] if WEIGHTS in files else [f"'files' does not list {WEIGHTS}"]
    for name, entry in files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts or name in ("", MANIFEST):
            problems.append(f"'files' names {name!r}, which is not a file inside the predictor folder")
        elif not (isinstance(entry, dict) and _is_int(entry.get("bytes")) and entry["bytes"] >= 0
                  and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])):
            problems.append(f"'files.{name}' must hold 'bytes' (a size) and 'sha256' (64 hex digits), got {entry!r:.80}")
    return problems


def check_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists is present with its size and sha256 (a missing folder is named as such)."""
    files = manifest["files"]
    for folder in sorted({Path(name).parts[0] for name in files if len(Path(name).parts) > 1}):
        if not (directory / folder).is_dir():
            count = sum(Path(name).parts[0] == folder for name in files)
            raise ValueError(f"{directory / folder}: missing {folder} folder ({MANIFEST} lists {count} files in "
                             "it). Copy the whole predictor directory, or re-save it.")
    for name, expected in files.items():
        check_file(directory, name, expected)
    for folder in sorted({Path(name).parts[0] for name in files if len(Path(name).parts) > 1}):
        _refuse_unlisted(directory, folder, files)


# Files a Hugging Face tokenizer folder may hold that AutoTokenizer reads when present (config.json can choose the
# tokenizer's class): one of them added to a saved predictor's tokenizer/ changes what the predictor computes.
TOKENIZER_READS = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "config.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
    "chat_template.jinja", "chat_template.json"})


def _refuse_unlisted(directory: Path, folder: str, files: dict[str, Any]) -> None:
    """A file the tokenizer would read (:data:`TOKENIZER_READS`), added to ``tokenizer/`` after the manifest listed
    its files, is refused: an ``added_tokens.json`` gives ids past the model's vocabulary, which load and then fail
    with an IndexError on the first text using them. Other added files (notes) are left alone."""
    if folder != "tokenizer":
        return
    extra = sorted(p.relative_to(directory).as_posix() for p in (directory / folder).rglob("*")
                   if p.is_file() and (p.name in TOKENIZER_READS or "chat_templates" in p.parts)
                   and p.relative_to(directory).as_posix() not in files)
    if extra:
        listed = sorted(name.split("/", 1)[1] for name in files if name.startswith(folder + "/"))
        more = f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""
        raise ValueError(f"{directory / extra[0]}: not a file of this predictor: {MANIFEST} lists {', '.join(listed)} "
                         f"in {folder}/, and {', '.join(extra[:3])}{more} {'was' if len(extra) == 1 else 'were'} added "
                         f"since it was saved, which the tokenizer would read. Remove what was added, or copy the "
                         "predictor again from the original.")


def check_file(directory: Path, name: str, expected: dict[str, Any]) -> Path:
    path = directory / name
    if not path.is_file():
        raise ValueError(f"{path}: missing. Copy the whole predictor directory, or re-save it.")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise ValueError(f"{path}: {size} bytes but the manifest says {expected['bytes']}: the file is truncated "
                         "or replaced. Copy it again from the original predictor.")
    try:
        digest = sha256(path)
    except OSError as err:
        raise ValueError(unreadable(path, err)) from None
    if digest != expected["sha256"]:
        raise ValueError(f"{path}: contents do not match the manifest's sha256: the file was changed or belongs to "
                         "another predictor. Copy it again from the original.")
    return path


def load_featurizer(directory: Path, config: dict[str, Any]) -> Any:
    """The featurizer ``config`` describes (the tokenizer read from ``directory/tokenizer``)."""
    params = {k: v for k, v in config.items() if k != "kind"}
    try:
        if config.get("kind") == "ngram":
            return NgramFeaturizer(**params)
        if config.get("kind") == "tokenizer":
            folder = directory / "tokenizer"
            if not folder.is_dir():
                raise ValueError(f"{folder}: missing tokenizer folder. Copy the whole predictor directory.")
            return TokenizerFeaturizer(_tokenizer(folder), **params)
    except TypeError as err:
        raise ValueError(f"{directory / MANIFEST}: 'featurizer' has settings this summon does not take ({err}); "
                         "re-save the predictor.") from None
    raise ValueError(f"{directory / MANIFEST}: unknown featurizer {config.get('kind')!r}.")


def _tokenizer(folder: Path) -> Any:
    """The Hugging Face tokenizer saved in ``folder``; a file in it that cannot be read or parsed is a ValueError
    naming the folder (transformers' own errors name neither the file nor the predictor)."""
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except OSError as err:
        where = Path(err.filename) if getattr(err, "filename", None) else folder
        raise ValueError(unreadable(where, err)) from None
    except (ValueError, KeyError, IndexError, AttributeError, RecursionError) as err:
        raise ValueError(f"{folder}: the tokenizer cannot be loaded ({type(err).__name__}: {str(err)[:200]}): a file in "
                         "it was changed or added since the predictor was saved. Copy the tokenizer folder again from "
                         "the original predictor.") from None


def load_model(directory: Path, manifest: dict[str, Any]) -> nn.Module:
    """The model of a checked manifest: built from ``architecture``, weights loaded and outputs checked."""
    try:
        model = model_from_architecture(manifest["architecture"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{directory / MANIFEST}: 'architecture' does not describe a model summon can build "
                         f"({type(err).__name__}: {err}); re-save the predictor.") from None
    load_weights(model, directory / WEIGHTS)
    check_outputs(directory, manifest, model)
    return model


def model_outputs(model: nn.Module) -> int | None:
    """Logits per input (or token) of a built model: its last linear layer's width (the HF config's labels)."""
    model = unwrap(model)
    if isinstance(model, HFTaskModel):
        return int(model.config.num_labels)
    if isinstance(model, ComposedMember):
        model = model.base
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def check_outputs(directory: Path, manifest: dict[str, Any], model: nn.Module) -> None:
    """``len(labels)`` equals the model's outputs, less a defer or ``X`` output where the architecture has one."""
    arch = manifest["architecture"]
    while arch.get("type") == "composed":
        arch = arch["base"]
    extra = outputs({**arch, "num_labels": 0})
    have, labels = model_outputs(model), manifest["labels"]
    if have is not None and have - extra != len(labels):
        more = " (besides its defer/X output)" if extra else ""
        raise ValueError(f"{directory / MANIFEST}: 'labels' names {len(labels)} classes but the model in {WEIGHTS} "
                         f"has {have - extra} class outputs{more}: the labels and the weights come from different "
                         "predictors. Restore manifest.json from the original, or re-save the predictor.")


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

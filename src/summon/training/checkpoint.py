"""Checkpoints that survive ``kill -9`` and never unpickle: model, optimizer, scheduler, RNG states, data position.

A checkpoint folder holds only safetensors and JSON:

- ``model.safetensors``: the unwrapped model's weights;
- ``optimizer.json`` + ``optimizer.safetensors``, ``scheduler.json``, ``scaler.json`` (fp16 only) and
  ``trainer.json`` (:class:`TrainerState`, accelerate's step counter): each object's state with its tensors
  moved to the ``.safetensors`` file and its structure (numbers, strings, tuples, integer keys) in the JSON;
- ``rng_<process>.json`` + ``rng_<process>.safetensors``: every process's Python, NumPy, torch and CUDA
  generator states, written by that process;
- ``run_config.json`` (the settings that must not change), ``data.json`` (the training data's fingerprint)
  and ``checkpoint.json`` (format, and the size and sha256 of every file above), then ``COMPLETE``.

The main process writes everything but the RNG files. Each save goes to a staging folder first and is then
swapped in with renames, so a kill at any moment leaves either the previous or the new checkpoint whole. A
resumption checks the format, the configuration, every file's checksum and the training data before it
loads anything; a checkpoint written by accelerate's ``save_state`` (pickles) is refused, never opened.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from summon.core.files import follow_umask
from summon.data.spec import TaskData
from summon.predictors.saved import sha256

logger = logging.getLogger(__name__)

FORMAT = "summon-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "checkpoint.json"
COMPLETE = "COMPLETE"
CONFIG_FILE = "run_config.json"
DATA_FILE = "data.json"
MODEL_FILE = "model.safetensors"
OLD_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")  # what accelerate's save_state wrote: pickles, never opened


@dataclass
class TrainerState:
    """Where training stands; saved with every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of the current epoch already consumed
    best_metric: float | None = None
    best_step: int | None = None
    done: bool = False

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(state) - known)
        if unknown:
            raise ValueError(f"unknown trainer state keys {unknown} (known: {sorted(known)})")
        for key, value in state.items():
            setattr(self, key, value)


# Keys that may change when resuming: how often to log, evaluate and save, and what to measure afterwards.
FREE_TO_CHANGE = ("description", "cost", "cache_dir", "output_dir", "data.data_dir", "data.eval", "train.progress",
                  "train.log_every", "train.eval_every", "train.save_every", "train.eval_batch_size", "train.metric")


def fixed_part(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The nested config without the keys in :data:`FREE_TO_CHANGE`."""
    out = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if path in FREE_TO_CHANGE:
            continue
        out[key] = fixed_part(value, path + ".") if isinstance(value, dict) else value
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Settings that differ between a saved run and this one.

    A key the saved run does not have is a setting added to summon after that run started; it is
    skipped with a warning rather than refusing (new settings default to the old behaviour).
    """
    keys = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            logger.warning("checkpoint predates setting %s%s; resuming with %r", prefix, key, new[key])
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return keys


def without_unused_model_fields(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """``saved`` without the ``model`` keys that the current model kind does not have, when the kind is the same.

    Checkpoints written before each model kind got its own config class hold every kind's fields (``first``
    of a truncated model in an n-gram run, ...); those were unused by that kind, so they are no change.
    """
    old_model, new_model = saved.get("model"), now.get("model")
    if not (isinstance(old_model, dict) and isinstance(new_model, dict)):
        return saved
    if old_model.get("kind", "pretrained") != new_model.get("kind"):
        return saved
    return {**saved, "model": {k: v for k, v in old_model.items() if k in new_model}}


def data_fingerprint(data: TaskData) -> dict[str, Any]:
    """What a checkpoint records of its training data: where it came from, its size and an exact sha256 of its
    canonical examples (texts and labels) and label names (:meth:`TaskData.fingerprint`)."""
    return {"source": data.source, "task": data.task, "labels": list(data.labels), "examples": len(data),
            "sha256": data.fingerprint()}


# --- tensors apart, structure in JSON --------------------------------------------------------------


def pack(value: Any, tensors: dict[str, torch.Tensor], where: str = "state") -> Any:
    """``value`` as JSON-able data, its tensors moved into ``tensors`` (named ``t0``, ``t1``, ...).

    Tuples, dicts with keys other than plain strings and NumPy arrays are tagged so :func:`unpack` restores
    them exactly. Anything else (an object, a function) is refused: a checkpoint holds data, not code.
    """
    if torch.is_tensor(value):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous()
        return {"__tensor__": name}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [pack(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [pack(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: pack(v, tensors, f"{where}.{k}") for k, v in value.items()}
        return {"__items__": [[pack(k, tensors, where), pack(v, tensors, f"{where}.{k}")] for k, v in value.items()]}
    raise TypeError(f"cannot checkpoint {where}: a {type(value).__name__} is neither a tensor nor plain data")


def unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`pack`; raises ValueError on a tag or tensor name it does not know."""
    if isinstance(value, list):
        return [unpack(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        name = value["__tensor__"]
        if name not in tensors:
            raise ValueError(f"it names tensor {name!r}, which its .safetensors file does not hold")
        return tensors[name]
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    if "__tuple__" in value:
        return tuple(unpack(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {unpack(k, tensors): unpack(v, tensors) for k, v in value["__items__"]}
    return {k: unpack(v, tensors) for k, v in value.items()}


def write_part(folder: Path, name: str, value: Any) -> None:
    """``<name>.json``, plus ``<name>.safetensors`` when ``value`` holds tensors."""
    tensors: dict[str, torch.Tensor] = {}
    structure = pack(value, tensors, name)
    (folder / f"{name}.json").write_text(json.dumps(structure), encoding="utf-8")
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))


# --- the states ---------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's generator states: Python, NumPy, torch CPU and (where present) every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """The scheduler's ``state_dict`` with only plain data in ``lr_lambdas``.

    ``LambdaLR`` saves each schedule function's ``__dict__``; the functions themselves are rebuilt from the
    config, so whatever in those dicts is not plain data is left out rather than pickled.
    """
    state = dict(scheduler.state_dict())
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [None if entry is None else {k: v for k, v in entry.items() if _plain(v)}
                               for entry in state["lr_lambdas"]]
    return state


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


@dataclass
class Tracked:
    """What a checkpoint saves and restores (the prepared objects; the model is unwrapped to save)."""

    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    state: TrainerState | None = None
    data: dict[str, Any] | None = None  # data_fingerprint() of the training split


class CheckedFiles:
    """Reads a checkpoint folder's manifest and files, each file checked once per process against the size and
    sha256 its manifest recorded (a file that is not the one written is refused with a message naming it)."""

    def __init__(self) -> None:
        self._checked: set[Path] = set()  # files whose checksum was verified in this process

    def forget(self) -> None:
        """Check every file again (a new checkpoint was written)."""
        self._checked.clear()

    def manifest(self, path: Path) -> dict[str, Any]:
        file = path / MANIFEST
        if not file.is_file():
            old = sorted(p.name for p in path.iterdir() if p.suffix in OLD_SUFFIXES)
            if old:
                raise ValueError(f"{path} was written by an older summon (pickled state: {', '.join(old)}); summon "
                                 "no longer loads pickles, since loading one can run any code. Delete "
                                 f"{path} to start this run over, or use a new output_dir.")
            raise ValueError(f"{path} is not a complete checkpoint: {MANIFEST} is missing.{_start_over(path)}")
        manifest = _parse_json(file)
        if not _manifest_ok(manifest):
            raise ValueError(f"checkpoint file {file} is not a {FORMAT} manifest.{_start_over(path)}")
        if manifest["format_version"] > FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer summon (checkpoint format {manifest['format_version']}, "
                             f"this one reads {FORMAT_VERSION}): upgrade summon to resume it.")
        return manifest

    def verified(self, path: Path, manifest: dict[str, Any], name: str) -> Path:
        """``path/name`` after checking it is the file that was written (size and sha256 in the manifest)."""
        file = path / name
        if file in self._checked:
            return file
        entry = manifest["files"].get(name)
        if entry is None or not file.is_file():
            raise ValueError(f"checkpoint file {file} is missing.{_start_over(path)}")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise ValueError(f"checkpoint file {file} has {size} bytes where {entry['bytes']} were written: it was "
                             f"truncated or changed.{_start_over(path)}")
        if sha256(file) != entry["sha256"]:
            raise ValueError(f"checkpoint file {file} changed after it was written (its sha256 differs from "
                             f"{MANIFEST}'s).{_start_over(path)}")
        self._checked.add(file)
        return file

    def json(self, path: Path, manifest: dict[str, Any], name: str) -> Any:
        return _parse_json(self.verified(path, manifest, name))

    def part(self, path: Path, manifest: dict[str, Any], name: str) -> Any:
        """What :func:`write_part` wrote as ``name``."""
        structure = self.json(path, manifest, f"{name}.json")
        tensors = {}
        if f"{name}.safetensors" in manifest["files"]:
            file = self.verified(path, manifest, f"{name}.safetensors")
            try:
                tensors = load_file(str(file))
            except (SafetensorError, OSError, ValueError) as exc:
                raise ValueError(f"checkpoint file {file} is not a readable safetensors file ({exc}).") from exc
        try:
            return unpack(structure, tensors)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"checkpoint file {path / (name + '.json')} is malformed: {exc}.") from exc


class Checkpointer:
    """Saves to ``<dir>`` via ``<dir>.staging``; falls back to ``<dir>.previous`` if a swap was interrupted.

    ``config`` (the run's settings that must not change between a run and its resumption) is written
    beside each checkpoint and compared before anything is loaded. It is the typed config as plain data
    (every default filled in), so writing a default explicitly on resumption is no change. :meth:`track`
    names what is saved and restored, and the training data's fingerprint that a resumption must match.
    """

    def __init__(self, directory: str | Path, config: dict[str, Any] | None = None):
        self.directory = Path(directory)
        self.config = config or {}
        self.staging = self.directory.with_name(self.directory.name + ".staging")
        self.previous = self.directory.with_name(self.directory.name + ".previous")
        self.tracked = Tracked()
        self.files = CheckedFiles()

    def track(self, model: Any, optimizer: Any, scheduler: Any, state: TrainerState, *,
              data: dict[str, Any] | None) -> None:
        """Save and restore these (prepared) objects; ``data`` is :func:`data_fingerprint` of the training split."""
        self.tracked = Tracked(model, optimizer, scheduler, state, data)

    def latest(self) -> Path | None:
        for candidate in (self.directory, self.previous):
            if (candidate / COMPLETE).is_file():
                return candidate
        return None

    # --- saving ---

    def save(self, accelerator: Any) -> None:
        """Write a checkpoint (the main process the shared files, each process its RNG state) and swap it in."""
        if accelerator.is_main_process:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self._write_shared(accelerator)
        write_part(self.staging, f"rng_{getattr(accelerator, 'process_index', 0)}", rng_state())
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self._seal()
            self._swap()
        accelerator.wait_for_everyone()

    def _write_shared(self, accelerator: Any) -> None:
        tracked, folder = self.tracked, self.staging
        if tracked.model is not None:
            save_model(accelerator.unwrap_model(tracked.model), str(folder / MODEL_FILE))
        if tracked.optimizer is not None:
            write_part(folder, "optimizer", tracked.optimizer.state_dict())
        if tracked.scheduler is not None:
            write_part(folder, "scheduler", scheduler_state(tracked.scheduler))
        if getattr(accelerator, "scaler", None) is not None:
            write_part(folder, "scaler", accelerator.scaler.state_dict())
        state = tracked.state.state_dict() if tracked.state is not None else None
        write_part(folder, "trainer", {"state": state, "accelerator_step": getattr(accelerator, "step", 0)})
        (folder / CONFIG_FILE).write_text(json.dumps(self.config, indent=1, default=str), encoding="utf-8")
        if tracked.data is not None:
            (folder / DATA_FILE).write_text(json.dumps(tracked.data, indent=1), encoding="utf-8")

    def _seal(self) -> None:
        """The manifest (every file's size and sha256), then ``COMPLETE``."""
        follow_umask(self.staging)  # safetensors writes owner-only; the rest follows the umask
        files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
                 for p in sorted(self.staging.iterdir()) if p.is_file()}
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": files}
        (self.staging / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        (self.staging / COMPLETE).write_text("ok\n")

    def _swap(self) -> None:
        shutil.rmtree(self.previous, ignore_errors=True)
        if self.directory.exists():
            os.replace(self.directory, self.previous)
        os.replace(self.staging, self.directory)
        shutil.rmtree(self.previous, ignore_errors=True)

    # --- checking ---

    def check_config(self) -> Path | None:
        """The latest complete checkpoint, after refusing an old (pickled) format or another configuration;
        None when there is none. Cheap: call it before building anything."""
        self.files.forget()
        path = self.latest()
        if path is None:
            return None
        manifest = self.files.manifest(path)
        saved = self.files.json(path, manifest, CONFIG_FILE)
        if not isinstance(saved, dict):
            raise ValueError(f"checkpoint file {path / CONFIG_FILE} is malformed: not a mapping.{_start_over(path)}")
        now = json.loads(json.dumps(self.config, default=str))
        changed = changed_keys(without_unused_model_fields(saved, now), now)
        if changed:
            raise ValueError(f"{self.directory.parent} holds a run with another configuration "
                             f"({'; '.join(changed[:6])}). Use a new output_dir, or delete that folder to start over.")
        return path

    def _check_data(self, path: Path, manifest: dict[str, Any]) -> None:
        now = self.tracked.data
        if now is None:
            return
        saved = self.files.json(path, manifest, DATA_FILE)
        if not isinstance(saved, dict) or saved.get("sha256") != now["sha256"]:
            raise ValueError(data_changed(path, saved if isinstance(saved, dict) else {}, now))

    # --- loading ---

    def load(self, accelerator: Any) -> bool:
        """Restore the latest complete checkpoint; returns False when there is none.

        Refuses (ValueError, nothing loaded) an old pickled format, another configuration, a file that is not
        the one written, and training data other than the checkpoint's.
        """
        path = self.check_config()
        if path is None:
            return False
        manifest = self.files.manifest(path)
        own_rng = f"rng_{getattr(accelerator, 'process_index', 0)}."
        for name in manifest["files"]:
            if not name.startswith("rng_") or name.startswith(own_rng):
                self.files.verified(path, manifest, name)
        self._check_data(path, manifest)
        self._restore(path, manifest, accelerator)
        logger.info("resumed from %s", path)
        return True

    def _restore(self, path: Path, manifest: dict[str, Any], accelerator: Any) -> None:
        tracked = self.tracked
        if tracked.model is not None:
            self._load_model(path, manifest, accelerator.unwrap_model(tracked.model))
        for name, target in (("optimizer", tracked.optimizer), ("scheduler", tracked.scheduler),
                             ("scaler", getattr(accelerator, "scaler", None))):
            if target is not None:
                _load_state(target, self.files.part(path, manifest, name), path / f"{name}.json")
        trainer = self.files.part(path, manifest, "trainer")
        if not isinstance(trainer, dict):
            raise ValueError(f"checkpoint file {path / 'trainer.json'} is malformed: not a mapping.")
        if tracked.state is not None:
            _load_state(tracked.state, trainer.get("state"), path / "trainer.json")
        if hasattr(accelerator, "step"):
            accelerator.step = int(trainer.get("accelerator_step", 0))
        self._load_rng(path, manifest, getattr(accelerator, "process_index", 0))

    def _load_model(self, path: Path, manifest: dict[str, Any], model: torch.nn.Module) -> None:
        file = self.files.verified(path, manifest, MODEL_FILE)
        try:
            load_model(model, str(file), strict=True)
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise ValueError(f"checkpoint file {file} does not fit this run's model ({exc}).") from exc

    def _load_rng(self, path: Path, manifest: dict[str, Any], process: int) -> None:
        name = f"rng_{process}"
        if f"{name}.json" not in manifest["files"]:
            logger.warning("%s holds no RNG state for process %d (written by fewer processes): resuming with this "
                           "run's seeds, so it will not repeat an uninterrupted run bit for bit", path, process)
            return
        state = self.files.part(path, manifest, name)
        try:
            set_rng_state(state)
        except (TypeError, ValueError, KeyError, RuntimeError) as exc:
            raise ValueError(f"checkpoint file {path / (name + '.json')} holds no usable RNG state ({exc}).") from exc


def _manifest_ok(manifest: Any) -> bool:
    if not (isinstance(manifest, dict) and manifest.get("format") == FORMAT
            and isinstance(manifest.get("format_version"), int) and isinstance(manifest.get("files"), dict)):
        return False
    return all(isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
               for e in manifest["files"].values())


def _parse_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"checkpoint file {file} is not readable JSON ({exc}).{_start_over(file.parent)}") from exc


def _load_state(target: Any, state: Any, file: Path) -> None:
    try:
        target.load_state_dict(state)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:
        raise ValueError(f"checkpoint file {file} does not fit this run ({exc}).{_start_over(file.parent)}") from exc


def _start_over(path: Path) -> str:
    return f" Delete {path} to start this run over, or use a new output_dir."


def data_changed(path: Path, saved: dict[str, Any], now: dict[str, Any]) -> str:
    """The refusal for training data other than the checkpoint's: which data, what differs, what to do."""
    if saved.get("labels") != now["labels"]:
        what = f"its label names are {now['labels']} instead of {saved.get('labels')}"
    elif saved.get("examples") != now["examples"]:
        what = f"it has {now['examples']} examples instead of {saved.get('examples')}"
    else:
        what = f"it has the same number of examples ({now['examples']}) but other texts or labels"
    source = now["source"] if saved.get("source") == now["source"] else f"{now['source']} (was {saved.get('source')})"
    return (f"data.train changed since the checkpoint {path} was written: the training data read from {source} "
            f"is not the data this run started on; {what} (sha256 {now['sha256'][:12]}, was "
            f"{str(saved.get('sha256'))[:12]}). Resuming would continue on other rows. Restore that data, use a new "
            f"output_dir, or delete {path} to start this run over on the new data.")

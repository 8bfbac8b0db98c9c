"""Checkpoints that survive ``kill -9``: model, optimizer, scheduler, RNG states and the data position.

``accelerate``'s ``save_state`` writes the model (safetensors), optimizer, scheduler and every process's RNG
states; :class:`TrainerState` rides along as a registered object and records the step, epoch and batches
consumed in the epoch. Each save goes to a staging folder first and is then swapped in with renames, so
a kill at any moment leaves either the previous or the new checkpoint whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


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


class Checkpointer:
    """Saves to ``<dir>`` via ``<dir>.staging``; falls back to ``<dir>.previous`` if a swap was interrupted.

    ``config`` (the run's settings that must not change between a run and its resumption) is written
    beside each checkpoint and compared before anything is loaded. It is the typed config as plain data
    (every default filled in), so writing a default explicitly on resumption is no change.
    """

    def __init__(self, directory: str | Path, config: dict[str, Any] | None = None):
        self.directory = Path(directory)
        self.config = config or {}
        self.staging = self.directory.with_name(self.directory.name + ".staging")
        self.previous = self.directory.with_name(self.directory.name + ".previous")

    def latest(self) -> Path | None:
        for candidate in (self.directory, self.previous):
            if (candidate / "COMPLETE").is_file():
                return candidate
        return None

    def save(self, accelerator: Any) -> None:
        if accelerator.is_main_process:
            shutil.rmtree(self.staging, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(self.staging), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (self.staging / "run_config.json").write_text(json.dumps(self.config, indent=1, default=str))
            (self.staging / "COMPLETE").write_text("ok\n")
            shutil.rmtree(self.previous, ignore_errors=True)
            if self.directory.exists():
                os.replace(self.directory, self.previous)
            os.replace(self.staging, self.directory)
            shutil.rmtree(self.previous, ignore_errors=True)
        accelerator.wait_for_everyone()

    def load(self, accelerator: Any) -> bool:
        """Restore the latest complete checkpoint; returns False when there is none."""
        path = self.latest()
        if path is None:
            return False
        saved = json.loads((path / "run_config.json").read_text()) if (path / "run_config.json").is_file() else {}
        now = json.loads(json.dumps(self.config, default=str))
        changed = changed_keys(without_unused_model_fields(saved, now), now)
        if changed:
            raise ValueError(f"{self.directory.parent} holds a run with another configuration "
                             f"({'; '.join(changed[:6])}). Use a new output_dir, or delete that folder to start over.")
        accelerator.load_state(str(path))
        logger.info("resumed from %s", path)
        return True

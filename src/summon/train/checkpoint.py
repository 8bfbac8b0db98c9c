"""Checkpoints that survive ``kill -9``: model, optimizer, scheduler, RNG states and the data position.

``accelerate``'s ``save_state`` writes the model (safetensors), optimizer, scheduler and every process's RNG
states; :class:`TrainerState` rides along as a registered object and records the step, epoch and batches
consumed in the epoch. Each save goes to a staging folder first and is then swapped in with renames, so
a kill at any moment leaves either the previous or the new checkpoint whole.
"""

from __future__ import annotations

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


class Checkpointer:
    """Saves to ``<dir>`` via ``<dir>.staging``; falls back to ``<dir>.previous`` if a swap was interrupted."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
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
        accelerator.load_state(str(path))
        logger.info("resumed from %s", path)
        return True

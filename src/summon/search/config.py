"""``summon auto``'s options, declared once: the CLI flags and ``summon.auto(...)``'s keywords come from here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["AutoConfig", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$")
_UNIT_SECONDS = {None: 60.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``60m``, ``1.5h``, ``90s`` or a bare number of minutes.

    Raises:
        ValueError: For anything else, saying what is accepted.
    """
    if isinstance(text, bool):
        raise ValueError(f"a duration like 60m, 1.5h or 90s, got {text!r}")
    if isinstance(text, int | float):
        seconds = float(text) * 60.0
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ValueError(f"a duration like 60m, 1.5h or 90s (a bare number is minutes), got {text!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a positive duration, got {text!r}")
    return seconds


def _share(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number between 0 and 1 (a fraction: 0.01 = 1 point), got {value!r}")


@dataclass(frozen=True)
class AutoConfig:
    """What ``summon auto`` searches for, on what, and how long (see :func:`summon.search.auto.run_auto`)."""

    teacher: str | None = field(default=None, metadata={
        "cli": False, "flag": "TEACHER", "help": "the teacher: a summon predictor folder, a Hugging Face classifier "
        "folder or hf:ID"})
    train: str | None = field(default=None, metadata={
        "help": "training split (sst2:train, a JSONL/CSV/TSV file, hub:ID:SPLIT): what the students learn from"})
    heldout: str | None = field(default=None, metadata={
        "help": "labelled held-out split (sst2:dev, a file): cut into calibration, selection and certification rows"})
    out: str = field(default="summon_auto", metadata={
        "help": "folder for the candidates, the chosen predictor (OUT/predictor) and the report (OUT/report); "
        "running the same command again resumes there"})
    max_drop: float | None = field(default=None, metadata={
        "help": "target: the cheapest predictor within this accuracy drop from the teacher (a fraction: 0.01 = "
        "1 point; the default target)"})
    budget: float | None = field(default=None, metadata={
        "help": "target: the most accurate predictor costing at most this fraction of the teacher's FLOPs"})
    guaranteed: bool = field(default=False, metadata={
        "help": "with --max-drop: choose by Learn-then-Test over every candidate and threshold on the selection "
        "rows, so the chosen point's drop is within the target with probability at least 1 - delta"})
    delta: float = field(default=0.1, metadata={
        "help": "the certificate holds with probability at least 1 - delta"})
    time: str = field(default="60m", metadata={
        "help": "search budget in wall-clock time (60m, 1.5h, 900s); candidates that do not fit are left out"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N: where candidates train and "
                                                          "are measured"})
    data_dir: str | None = field(default=None, metadata={"help": "local data catalog folder ($SUMMON_DATA_DIR)"})
    train_limit: int | None = field(default=None, metadata={
        "help": "use the first N training rows (quick runs; the report says so)"})
    heldout_limit: int | None = field(default=None, metadata={"help": "use the first N held-out rows"})
    batch_size: int = field(default=32, metadata={"help": "batch size at which milliseconds are measured"})
    seed: int = field(default=0, metadata={"help": "seed of the held-out cut and of every training run"})
    only: tuple[str, ...] | None = field(default=None, metadata={
        "metavar": "NAME", "help": "search only these candidates (and what they build on); see --dry-run"})
    int8: bool = field(default=True, metadata={"help": "include int8 copies of the teacher and of staged candidates"})
    ngram_buckets: int = field(default=262144, metadata={"help": "hash buckets of the n-gram student"})
    student_layers: int = field(default=2, metadata={"help": "layers of the truncated student"})
    continue_layer: int = field(default=2, metadata={
        "help": "the layer after which the continuing cascade's student exit sits"})

    def __post_init__(self) -> None:
        if self.max_drop is not None and self.budget is not None:
            raise ValueError("give one target: --max-drop or --budget, not both")
        for name in ("max_drop", "delta"):
            if getattr(self, name) is not None:
                _share(getattr(self, name), name)
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, int | float)
                                        or not 0 < self.budget <= 1):
            raise ValueError(f"budget must be a fraction of the teacher's cost in (0, 1], got {self.budget!r}")
        if self.guaranteed and self.budget is not None:
            raise ValueError("--guaranteed bounds an accuracy drop: use it with --max-drop, not --budget")
        parse_duration(self.time)
        for name in ("train_limit", "heldout_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        for name in ("batch_size", "ngram_buckets", "student_layers", "continue_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if isinstance(self.only, list):
            object.__setattr__(self, "only", tuple(self.only))

    @property
    def seconds(self) -> float:
        return parse_duration(self.time)

    @property
    def target(self) -> dict[str, float]:
        """``{"max_drop": x}`` (0.01 when no target is given) or ``{"budget": x}``."""
        if self.budget is not None:
            return {"budget": float(self.budget)}
        return {"max_drop": 0.01 if self.max_drop is None else float(self.max_drop)}

    def missing(self) -> list[str]:
        """The required options not given, as the user names them."""
        return [flag for flag, value in (("TEACHER", self.teacher), ("--train", self.train),
                                          ("--heldout", self.heldout)) if not value]

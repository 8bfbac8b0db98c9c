"""The boosting rounds of a progressive ensemble (B-DISTIL, reconstructed: see :mod:`summon.methods.progressive`).

Each candidate of each round is an ordinary run of the one training loop (its own folder under
``<output_dir>/rounds/<t>/<k>_<name>/``, resumable), trained on that round's weights. Between runs this module
computes the round's weights from the teacher's and the ensemble's logits, checks the weak-learning condition
on held-out rows, takes the member and updates the ensemble. Running the same command again after an
interruption resumes the candidate that was training; finished candidates are only reloaded.

The result, ``<output_dir>/model``, is a saved progressive ensemble (format ``summon-progressive``): the members
as saved predictors under ``members/<k>/`` and a manifest with each member's step ``alpha``, whether it reads
the previous member, and the rounds (candidates tried, edges, whether the condition held).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from summon.core.config import dump_yaml, to_dict
from summon.core.files import follow_umask
from summon.data.spec import TaskData
from summon.losses import adaboost_step, bounded, edge, residual_log_weights
from summon.methods import METHODS
from summon.methods.progressive import ROUND_INPUTS, Candidate, ProgressiveConfig
from summon.models.member import member_outputs
from summon.predictors.predictor import Predictor, load_predictor
from summon.predictors.saved import safe_name, save_ensemble
from summon.training.config import RunConfig
from summon.training.sources import build_data, build_teacher
from summon.training.teacher_cache import teacher_logits

logger = logging.getLogger(__name__)


@dataclass
class Trial:
    """A trained candidate: where it is, its held-out edge, and its outputs on every training row."""

    index: int
    candidate: Candidate
    path: Path
    edge: float
    logits: torch.Tensor  # [N, C] raw outputs f
    hidden: torch.Tensor  # [N, H] last hidden layer, handed to the next member


@dataclass
class Ensemble:
    """The ensemble so far, on the training rows."""

    logits: torch.Tensor  # [N, C] F: the sum of the members' outputs α·h
    hidden: torch.Tensor | None = None  # [N, H] the last member's hidden layer
    last_index: int = 0  # candidate index of the last member


def holdout_rows(n: int, share: float, seed: int) -> np.ndarray:
    """A boolean mask of the held-out rows (at least one, at most n − 1), fixed by ``seed``."""
    count = min(max(1, round(share * n)), n - 1)
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).permutation(n)[:count]] = True
    return mask


def train_ensemble(cfg: RunConfig, train_model: Callable[[RunConfig], Path]) -> Path:
    """Run the boosting rounds of ``cfg`` (a ``progressive`` run without ``model``) and save the ensemble.

    Args:
        cfg: the run; ``method_args`` is a :class:`ProgressiveConfig`.
        train_model: the one training loop for a single model (:func:`summon.training.loop.train`).

    Returns:
        ``<output_dir>/model``, the saved ensemble.
    """
    pcfg: ProgressiveConfig = cfg.method_args
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(to_dict(cfg), out / "config.yaml")  # each candidate run checks its own resume
    data, eval_data = build_data(cfg)
    if data.task == "token_classification":
        raise ValueError("method 'progressive' builds sequence classifiers; this data is token classification")
    teacher = build_teacher(cfg, METHODS.get(cfg.method), data)
    target = torch.from_numpy(np.stack(teacher_logits(teacher, data, cache_dir=cfg.cache_dir,
                                                      batch_size=cfg.train.eval_batch_size))).double()
    held = torch.from_numpy(holdout_rows(len(data), pcfg.holdout, cfg.train.seed))
    ensemble = Ensemble(torch.zeros_like(target))
    members: list[tuple[Trial, float, bool]] = []
    rounds: list[dict[str, Any]] = []
    for t in range(pcfg.rounds):
        log_w = residual_log_weights(target, ensemble.logits, eta=pcfg.eta, clip=pcfg.clip,
                                     centred=pcfg.centre_teacher)
        trials, chosen = find_weak_learner(cfg, t, log_w, held, ensemble, data, train_model)
        rounds.append(_round_record(t, trials, chosen, pcfg))
        _write_rounds(out, rounds)
        if chosen is None:
            break
        alpha = adaboost_step(chosen.edge, pcfg.eta)
        composed = pcfg.composition and t > 0
        members.append((chosen, alpha, composed))
        step = alpha * bounded(chosen.logits.double(), pcfg.bounded_output)
        ensemble = Ensemble(ensemble.logits + step, chosen.hidden, chosen.index)
    if not members:
        raise ValueError(f"no member was taken in round 0 ({out / 'rounds.json'} lists the candidates and their "
                         "edges): lower method_args.gamma, set on_failure: best, or add a larger candidate")
    return _save(cfg, out, data, eval_data, teacher, members, rounds)


def find_weak_learner(cfg: RunConfig, t: int, log_w: tuple[torch.Tensor, torch.Tensor], held: torch.Tensor,
                      ensemble: Ensemble, data: TaskData, train_model: Callable[[RunConfig], Path]
                      ) -> tuple[list[Trial], Trial | None]:
    """FIND-WL: train the candidates in order until one meets the weak-learning condition on held-out rows.

    Returns every trial and the one taken (None when none qualifies and ``on_failure`` is ``stop``, or no edge
    is positive).
    """
    pcfg: ProgressiveConfig = cfg.method_args
    start = search_start(pcfg, t, ensemble.last_index)
    trials = []
    for index in range(start, len(pcfg.candidates)):
        trial = train_candidate(cfg, t, index, log_w, held, ensemble, data, train_model)
        trials.append(trial)
        logger.info("round %d: candidate %s has held-out edge %.4f (gamma %.3f)", t, trial.candidate.name,
                    trial.edge, pcfg.gamma)
        if trial.edge >= pcfg.gamma:
            return trials, trial
    best = max(trials, key=lambda trial: trial.edge, default=None)
    if pcfg.on_failure == "best" and best is not None and best.edge > 0:
        logger.warning("round %d: no candidate met the weak-learning condition (edge >= %.3f); taking the best, %s "
                       "(edge %.4f), as on_failure: best says", t, pcfg.gamma, best.candidate.name, best.edge)
        return trials, best
    logger.warning("round %d: no candidate met the weak-learning condition (edge >= %.3f); the ensemble stops at "
                   "%d members", t, pcfg.gamma, t)
    return trials, None


def search_start(pcfg: ProgressiveConfig, t: int, last_index: int) -> int:
    """The candidate FIND-WL tries first in round ``t`` (see ``ProgressiveConfig.search``)."""
    previous = last_index if t > 0 else 0
    if pcfg.search == "from_cheapest":
        return 0
    if pcfg.search == "from_previous":
        return previous
    return max(min(t, len(pcfg.candidates) - 1), previous)


def train_candidate(cfg: RunConfig, t: int, index: int, log_w: tuple[torch.Tensor, torch.Tensor],
                    held: torch.Tensor, ensemble: Ensemble, data: TaskData,
                    train_model: Callable[[RunConfig], Path]) -> Trial:
    """Train candidate ``index`` on round ``t``'s weights with the one loop; measure its held-out edge."""
    pcfg: ProgressiveConfig = cfg.method_args
    candidate = pcfg.candidates[index]
    run_dir = Path(cfg.output_dir) / "rounds" / str(t) / f"{index}_{safe_name(candidate.name)}"
    previous = ensemble.hidden if pcfg.composition and t > 0 else None
    _write_round_inputs(run_dir, log_w, held, previous)
    model = dataclasses.replace(candidate.model, compose_from=0 if previous is None else previous.shape[1])
    train = dataclasses.replace(cfg.train, epochs=candidate.epochs or cfg.train.epochs, lr=candidate.lr or cfg.train.lr)
    member_cfg = dataclasses.replace(cfg, model=model, output_dir=str(run_dir), train=train,
                                     data=dataclasses.replace(cfg.data, eval=None))
    path = train_model(member_cfg)
    predictor = load_predictor(path)
    logits, hidden = member_outputs(predictor.model, predictor.featurizer, data.task, data.examples, previous,
                                    batch_size=cfg.train.eval_batch_size)
    value = float(edge(bounded(logits.double(), pcfg.bounded_output)[held], log_w[0][held], log_w[1][held]))
    return Trial(index, candidate, path, value, logits, hidden)


def _write_round_inputs(run_dir: Path, log_w: tuple[torch.Tensor, torch.Tensor], held: torch.Tensor,
                        previous: torch.Tensor | None) -> None:
    """The round's weights (held-out rows at −inf: they do not train) and the previous hidden layer, per row."""
    run_dir.mkdir(parents=True, exist_ok=True)
    mask = held[:, None]
    arrays = {"log_w_plus": log_w[0].float().masked_fill(mask, -np.inf).contiguous(),
              "log_w_minus": log_w[1].float().masked_fill(mask, -np.inf).contiguous()}
    if previous is not None:
        arrays["previous_hidden"] = previous.float().contiguous()
    tmp = run_dir / (ROUND_INPUTS + ".tmp")
    save_file(arrays, str(tmp))
    follow_umask(tmp)  # safetensors writes owner-only: others read it as the rest of the run
    tmp.replace(run_dir / ROUND_INPUTS)


def _round_record(t: int, trials: list[Trial], chosen: Trial | None, pcfg: ProgressiveConfig) -> dict[str, Any]:
    return {"round": t, "tried": [{"candidate": tr.candidate.name, "edge": tr.edge,
                                   "condition_held": tr.edge >= pcfg.gamma} for tr in trials],
            "taken": chosen.candidate.name if chosen else None, "edge": chosen.edge if chosen else None,
            "condition_held": bool(chosen is not None and chosen.edge >= pcfg.gamma),
            "alpha": adaboost_step(chosen.edge, pcfg.eta) if chosen else None}


def _write_rounds(out: Path, rounds: list[dict[str, Any]]) -> None:
    tmp = out / "rounds.json.tmp"
    tmp.write_text(json.dumps(rounds, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / "rounds.json")


def prefix_accuracy(members: list[tuple[Predictor, float, bool]], data: TaskData, output: str, *,
                    batch_size: int = 128) -> list[float]:
    """Accuracy of the first k members' summed outputs on labelled ``data``, for every k."""
    gold = torch.tensor([ex["label"] for ex in data.examples])
    total, previous, out = None, None, []
    for predictor, alpha, composed in members:
        logits, hidden = member_outputs(predictor.model, predictor.featurizer, data.task, data.examples,
                                        previous if composed else None, batch_size=batch_size)
        step = alpha * bounded(logits.double(), output)
        total = step if total is None else total + step
        previous = hidden
        out.append(float((total.argmax(dim=1) == gold).double().mean()))
    return out


def _save(cfg: RunConfig, out: Path, data: TaskData, eval_data: TaskData | None, teacher: Predictor,
          members: list[tuple[Trial, float, bool]], rounds: list[dict[str, Any]]) -> Path:
    output = cfg.method_args.bounded_output
    entries = [(trial.path, {"name": trial.candidate.name, "alpha": alpha, "composed": composed, "output": output,
                             "hidden_width": int(trial.hidden.shape[1])}) for trial, alpha, composed in members]
    metrics: dict[str, Any] = {}
    if eval_data is not None and eval_data.has_labels:
        loaded = [(load_predictor(trial.path), alpha, composed) for trial, alpha, composed in members]
        metrics = {"eval": {"prefix_accuracy": prefix_accuracy(loaded, eval_data, output,
                                                               batch_size=cfg.train.eval_batch_size)},
                   "eval_data": eval_data.source}
        logger.info("accuracy after each member on %s: %s", eval_data.source,
                    ", ".join(f"{a:.4f}" for a in metrics["eval"]["prefix_accuracy"]))
    training = {"method": cfg.method, "method_args": to_dict(cfg.method_args), "train_data": data.source,
                "train_examples": len(data), "teacher": cfg.teacher, "teacher_fingerprint": teacher.fingerprint,
                "rounds": rounds, "config": to_dict(cfg)}
    path = save_ensemble(out / "model", entries, data.task, data.labels, extra={"training": training,
                                                                                 "metrics": metrics})
    logger.info("saved a progressive ensemble of %d members to %s", len(members), path)
    return path


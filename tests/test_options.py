"""Options declared once (:mod:`summon.core.options`): flags and keyword checks derived from a dataclass's
fields, and every field of the calibration, engine, controller and app configs reachable from the command line
and from the facade — a field added to one of them without being reachable fails here."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from typing import Literal

import pytest
from test_staged_contract import _data, early_exit
from toy import sentiment_rows, write_jsonl

import summon
from summon.adaptive.calibration import CalibrationSpec
from summon.adaptive.plain import PlainPredictor
from summon.api import SPEC_SET_BY, calibration_spec
from summon.cli.main import CONTROLLER, build_parser, main
from summon.core.options import add_options, flags, given, options_for
from summon.models import ModelConfig, build_model
from summon.serve.control import ControlConfig
from summon.serve.engine import Engine
from summon.serve.queue import EngineConfig


@dataclass(frozen=True)
class Toy:
    count: int = field(default=3, metadata={"help": "how many"})
    learned_l2: float = field(default=1e-3, metadata={"help": "a 5% penalty"})
    mode: Literal["fast", "slow"] = field(default="fast", metadata={"help": "how"})
    status: int = field(default=503, metadata={"choices": (503, 429), "help": "a status"})
    name: str | None = field(default=None, metadata={"help": "a name (default: none)"})
    sizes: tuple[int, ...] = field(default=(1, 8), metadata={"help": "sizes", "metavar": "N"})
    words: list[str] = field(default_factory=list, metadata={"help": "words"})
    degrade: bool = field(default=False, metadata={"help": "turn it on"})
    controller: bool = field(default=True, metadata={"help": "steer"})
    timeout_s: float = field(default=30.0, metadata={"flag": "--timeout", "help": "seconds"})
    rule: str = field(default="x", metadata={"cli": False, "flag": ("--budget", "--max-drop"), "help": "set elsewhere"})

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count must be at least 1, got {self.count}")
        if any(n < 1 for n in self.sizes):
            raise ValueError(f"sizes must be positive, got {self.sizes}")


def _parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    add_options(parser, Toy, **kwargs)
    return parser


def _refused(parser: argparse.ArgumentParser, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    return capsys.readouterr().err


# --- the helper -------------------------------------------------------------------------------------------------


def test_flag_names_come_from_field_names():
    assert flags(Toy) == {"count": ("--count",), "learned_l2": ("--learned-l2",), "mode": ("--mode",),
                          "status": ("--status",), "name": ("--name",), "sizes": ("--sizes",), "words": ("--words",),
                          "degrade": ("--degrade",), "controller": ("--no-controller",), "timeout_s": ("--timeout",),
                          "rule": ("--budget", "--max-drop")}
    assert flags(Toy, prefix="controller")["count"] == ("--controller-count",)
    args = _parser(prefix="controller").parse_args(["--controller-count", "4"])
    assert vars(args) == {"controller_count": 4} and given(args, Toy, prefix="controller") == {"count": 4}


def test_only_the_flags_given_are_in_the_namespace():
    assert vars(_parser().parse_args([])) == {} and given(_parser().parse_args([]), Toy) == {}
    args = _parser().parse_args(["--count", "3", "--mode", "fast"])  # the defaults' values, given: still given
    assert given(args, Toy) == {"count": 3, "mode": "fast"}
    assert Toy(**given(args, Toy)) == Toy()


def test_types_choices_bools_and_sequences():
    args = _parser().parse_args(["--count", "5", "--learned-l2", "0.5", "--mode", "slow", "--status", "429",
                                 "--name", "n", "--sizes", "2", "4", "--words", "a", "b", "--degrade",
                                 "--no-controller", "--timeout", "2.5"])
    assert given(args, Toy) == {"count": 5, "learned_l2": 0.5, "mode": "slow", "status": 429, "name": "n",
                                "sizes": (2, 4), "words": ["a", "b"], "degrade": True, "controller": False,
                                "timeout_s": 2.5}
    assert "rule" not in vars(args)  # cli: False


@pytest.mark.parametrize(("argv", "expected"), [
    (["--count", "many"], "argument --count: expected a whole number, got 'many'"),
    (["--count", "1.5"], "argument --count: expected a whole number, got '1.5'"),
    (["--learned-l2", "nan"], "argument --learned-l2: expected a finite number, got nan"),
    (["--mode", "fats"], "argument --mode: invalid choice: 'fats'"),
    (["--status", "500"], "argument --status: invalid choice: 500"),
    (["--count", "0"], "argument --count: must be at least 1, got 0"),  # the dataclass's own check, by flag
    (["--sizes", "2", "0"], "argument --sizes: must be positive, got (2, 0)"),
])
def test_values_are_refused_as_they_are_parsed(argv, expected, capsys):
    assert expected in _refused(_parser(), argv, capsys)


def test_help_shows_each_default_once():
    shown = " ".join(_parser().format_help().split())
    assert "--count COUNT how many (default: 3)" in shown and "a 5% penalty (default: 0.001)" in shown
    assert "--sizes N [N ...] sizes (default: 1 8)" in shown and "--mode {fast,slow} how (default: fast)" in shown
    assert "a name (default: none)" in shown and "(default: None)" not in shown
    assert "--degrade turn it on" in shown and "--no-controller steer (default: on; this flag turns it off)" in shown
    assert "--timeout TIMEOUT seconds (default: 30.0)" in shown and "--budget" not in shown


def test_a_field_without_help_or_of_an_unknown_type_is_a_programming_error():
    @dataclass
    class NoHelp:
        x: int = 1

    @dataclass
    class Odd:
        x: dict = field(default_factory=dict, metadata={"help": "a dict"})

    for owner, match in ((NoHelp, "NoHelp.x: an option needs metadata"), (Odd, "no flag for a field of type")):
        with pytest.raises(TypeError, match=match):
            add_options(argparse.ArgumentParser(), owner)


def test_options_for_splits_by_dataclass_and_suggests_a_name():
    assert options_for({"count": 2, "window": 9}, Toy, ControlConfig, where="f") == ({"count": 2}, {"window": 9})
    with pytest.raises(TypeError, match=r"f: unknown option 'cuont'\. Did you mean 'count'\? Options: .*count"):
        options_for({"cuont": 2}, Toy, where="f")
    with pytest.raises(ValueError, match="Did you mean 'window'"):
        options_for({"windows": 2}, Toy, ControlConfig, where="f", error=ValueError)
    with pytest.raises(TypeError, match="f: 'rule' is not an option here; it is set by budget="):
        options_for({"rule": "y"}, Toy, where="f", set_by={"rule": "budget="})
    with pytest.raises(TypeError, match="Did you mean 'budget'"):
        options_for({"budgte": 1}, Toy, where="f", also=["budget"])


# --- every field reachable: the command line ----------------------------------------------------------------------


def _command(name: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return sub.complete()


def _option_strings(command) -> set[str]:
    return {s for action in command._actions for s in action.option_strings}


@pytest.mark.parametrize("command", ["calibrate", "quantize"])
def test_every_calibration_field_is_a_flag_of_calibrate_and_quantize(command):
    shown = _option_strings(_command(command))
    for name, reach in flags(CalibrationSpec).items():
        assert reach and set(reach) <= shown, f"CalibrationSpec.{name} is not reachable from summon {command}"


def test_every_engine_controller_and_app_field_is_a_flag_of_serve():
    from summon.serve.options import ServeOptions

    shown = _option_strings(_command("serve"))
    for owner, prefix in ((EngineConfig, ""), (ControlConfig, CONTROLLER), (ServeOptions, "")):
        for name, reach in flags(owner, prefix=prefix).items():
            if owner is EngineConfig and name == "control":
                continue  # its own fields are walked as ControlConfig's
            assert reach and set(reach) <= shown, f"{owner.__name__}.{name} is not reachable from summon serve"


def test_the_controller_flags_reach_the_engine():
    from summon.cli.commands import engine_flags

    args = build_parser().parse_args(["serve", "m", "--controller-window", "64", "--controller-gain", "0.5",
                                      "--age-ms", "10", "--max-controllers", "2"])
    config = EngineConfig.of(**engine_flags(args))
    assert (config.control.window, config.control.gain, config.age_ms, config.max_controllers) == (64, 0.5, 10.0, 2)


# --- every field reachable: the facade ----------------------------------------------------------------------------


def _a_value(owner: type, f: dataclasses.Field):
    """A valid value of a field: its default (or the factory's)."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def test_every_calibration_field_is_a_keyword_of_calibrate_and_quantize():
    keywords = [set(inspect.signature(fn).parameters) for fn in (summon.calibrate, summon.quantize)]
    for f in dataclasses.fields(CalibrationSpec):
        if f.name in SPEC_SET_BY:  # the knob's keywords give it: they must be there
            assert all(set(SPEC_SET_BY[f.name]) <= params for params in keywords), f.name
            continue
        spec = calibration_spec(**{f.name: _a_value(CalibrationSpec, f)})
        assert getattr(spec, f.name) == _a_value(CalibrationSpec, f)
        assert all("options" in params for params in keywords)  # **options: the spec's fields


@pytest.fixture(scope="module")
def plain_predictor():
    built = build_model(ModelConfig(kind="ngram", num_buckets=64, embed_dim=4, init_seed=1), "classification", 2)
    return PlainPredictor(built.model, built.featurizer, "classification", ["neg", "pos"],
                          {"architecture": built.architecture})


def test_every_engine_and_controller_field_is_a_keyword_of_the_engine_and_the_ray_app(plain_predictor):
    from summon.serve.ray_app import RayServeOptions

    for owner in (EngineConfig, ControlConfig):
        for f in dataclasses.fields(owner):
            if f.name == "control":
                continue
            value = _a_value(owner, f)
            engine = Engine({"m": plain_predictor}, **{f.name: value})  # the engine takes the config's fields as keywords
            assert engine.config.flat()[f.name] == value, f"{owner.__name__}.{f.name} does not reach Engine"
            ray = RayServeOptions.of(**{f.name: value})
            assert ray.engine_options()[f.name] == value
    assert EngineConfig.of(**EngineConfig().flat()) == EngineConfig()


def test_an_unknown_calibration_keyword_is_refused_with_a_suggestion():
    with pytest.raises(TypeError, match=r"summon.calibrate: unknown option 'learned_l3'\. Did you mean 'learned_l2'"):
        summon.calibrate("not/loaded", "sst2:dev", learned_l3=0.5)
    with pytest.raises(TypeError, match=r"summon.quantize: unknown option 'polcy'\. Did you mean 'policy'"):
        summon.quantize("not/loaded", polcy="learned")
    with pytest.raises(TypeError, match="'cost_unit' is not an option here; it is set by unit="):
        summon.calibrate("not/loaded", "sst2:dev", cost_unit="ms")
    with pytest.raises(ValueError, match="policy sets how the int8 predictor is calibrated; give calibrate_on="):
        summon.quantize("not/loaded", policy="learned")


# --- learned_l2 and learned_features, end to end ----------------------------------------------------------------


LEARNED = {"policy": "learned", "learned_l2": 0.5, "learned_features": ["max_prob", "agree_run"]}
FLAGS = ["--policy", "learned", "--learned-l2", "0.5", "--learned-features", "max_prob", "agree_run"]


@pytest.fixture(scope="module")
def exits(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    return root, early_exit(root)


def _learned(calibration) -> None:
    assert (calibration.spec.learned_l2, calibration.spec.learned_features) == (0.5, ("max_prob", "agree_run"))
    assert (calibration.learned.l2, calibration.learned.features) == (0.5, ("max_prob", "agree_run"))


def test_learned_options_reach_calibrate_and_quantize_from_python(exits):
    _, path = exits
    _learned(summon.calibrate(summon.load(path, device="cpu"), _data(120, 0), latency=False, save=False, **LEARNED))
    _learned(summon.quantize(path, calibrate_on=_data(120, 0), latency=False, **LEARNED).calibration)


def test_learned_options_reach_calibrate_and_quantize_from_the_command_line(exits, capsys):
    root, path = exits
    data = str(write_jsonl(root / "cal.jsonl", sentiment_rows(120, 3)))
    copy = root / "copy"
    assert main(["quantize", path, str(copy), "--data", data, "--no-latency", *FLAGS]) == 0
    _learned(summon.load(copy, device="cpu").calibration)
    assert main(["calibrate", str(copy), "--data", data, "--no-latency", *FLAGS, "--learned-l2", "0.25"]) == 0
    assert summon.load(copy, device="cpu").calibration.spec.learned_l2 == 0.25
    assert json.loads((copy / "manifest.json").read_text())["adaptive"]["spec"]["learned_features"] == [
        "max_prob", "agree_run"]
    capsys.readouterr()
    assert main(["quantize", path, str(root / "none"), "--learned-l2", "0.5"]) == 2
    assert "--learned-l2 sets how the int8 copy is calibrated; give --data SPLIT" in capsys.readouterr().err
    assert main(["calibrate", path, "--data", data, "--learned-features", "max_prob", "size"]) == 2
    assert "argument --learned-features: invalid choice: 'size'" in capsys.readouterr().err


def test_the_ray_options_round_trip_through_a_config_files_args():
    import yaml

    from summon.serve.ray_app import RayServeOptions

    options = RayServeOptions.of(max_batch_rows=8, max_rows=2000, window=100, warmup_sizes=(1, 2), age_ms=5.0,
                                 autoscaling_config={"min_replicas": 1, "max_replicas": 2})
    assert options.engine.max_request_rows == 2000  # follows max_rows, as `summon serve --max-rows` does
    assert RayServeOptions.from_args(yaml.safe_load(yaml.safe_dump(options.to_args()))) == options
    with pytest.raises(ValueError, match=r"unknown option 'widnow'\. Did you mean 'window'"):
        RayServeOptions.from_args({"widnow": 3})

"""Tests for summon.config: dataclass <-> dict <-> YAML with whole-tree validation."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytest

from summon.config import ConfigError, apply_overrides, dump_yaml, from_dict, load_yaml, to_dict


@dataclass
class EvalSet:
    name: str
    split: Literal["train", "validation", "test"] = "validation"


@dataclass
class Train:
    lr: float = 1e-3
    steps: int = 10
    warmup: int = 0
    fp16: bool = False

    def __post_init__(self) -> None:
        if self.warmup > self.steps:
            raise ValueError(f"warmup ({self.warmup}) must not exceed steps ({self.steps})")


@dataclass
class Data:
    path: str
    eval: list[EvalSet] = field(default_factory=list)
    max_len: int | None = None


@dataclass
class Root:
    data: Data
    train: Train = field(default_factory=Train)
    kind: Literal["distill", "early_exit"] = "distill"
    exits: tuple[int, ...] = (2, 4)
    labels: dict[str, int] = field(default_factory=dict)
    teacher: Train | None = None
    width: int | list[int] = 8
    extra: Any = None
    seed: Optional[int] = None  # noqa: UP045 - typing.Optional must work too


def _errors(cls: type, data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        from_dict(cls, data, source="recipe.yaml")
    return info.value.errors


def _one_error(cls: type, data: dict[str, Any]) -> str:
    errors = _errors(cls, data)
    assert len(errors) == 1, errors
    return errors[0]


# --------------------------------------------------------------------------------------------- round trip


def test_round_trip_nested() -> None:
    cfg = Root(
        data=Data(path="d", eval=[EvalSet("a"), EvalSet("b", "test")], max_len=128),
        train=Train(lr=5e-5, steps=100, warmup=10, fp16=True),
        kind="early_exit",
        exits=(1, 2, 3),
        labels={"pos": 1, "neg": 0},
        teacher=Train(lr=0.1),
        width=[4, 8],
        extra={"anything": [1, "two"]},
        seed=7,
    )
    plain = to_dict(cfg)
    assert plain["exits"] == [1, 2, 3]
    assert plain["data"]["eval"][1] == {"name": "b", "split": "test"}
    assert from_dict(Root, plain) == cfg


def test_round_trip_through_yaml(tmp_path) -> None:
    cfg = Root(data=Data(path="d", eval=[EvalSet("x")]), exits=(3,))
    path = tmp_path / "sub" / "cfg.yaml"
    dump_yaml(to_dict(cfg), path)
    assert list(load_yaml(path)) == list(to_dict(cfg))  # key order kept
    assert from_dict(Root, load_yaml(path)) == cfg


def test_defaults_fill_missing_optional_keys() -> None:
    cfg = from_dict(Root, {"data": {"path": "p"}})
    assert cfg.train == Train() and cfg.exits == (2, 4) and cfg.teacher is None


# --------------------------------------------------------------------------------------------- scalars


def test_float_accepts_yaml_exponent_string_and_int() -> None:
    cfg = from_dict(Train, {"lr": "5e-5", "steps": 3})
    assert cfg.lr == pytest.approx(5e-5) and isinstance(cfg.lr, float)
    assert from_dict(Train, {"lr": 1}).lr == 1.0


def test_float_rejects_text() -> None:
    err = _one_error(Root, {"data": {"path": "p"}, "train": {"lr": "abc"}})
    assert err == "train.lr: expected a number, got 'abc' (str)"


@pytest.mark.parametrize("bad", [True, 1.5, "3"])
def test_int_rejects_bool_fraction_and_text(bad: Any) -> None:
    err = _one_error(Train, {"steps": bad})
    assert err.startswith("steps: expected an integer") and repr(bad) in err


def test_int_accepts_integral_float() -> None:
    assert from_dict(Train, {"steps": 20.0}).steps == 20


def test_bool_only_accepts_real_bools() -> None:
    assert _one_error(Train, {"fp16": 1}) == "fp16: expected true or false, got 1 (int)"


def test_str_rejects_number() -> None:
    assert _one_error(Data, {"path": 3}) == "path: expected a string, got 3 (int)"


def test_null_for_non_optional_field() -> None:
    err = _one_error(Root, {"data": {"path": "p"}, "train": None})
    assert err.startswith("train: null is not allowed")
    assert from_dict(Root, {"data": {"path": "p"}, "teacher": None, "seed": None}).teacher is None


# --------------------------------------------------------------------------------------------- structure


def test_unknown_key_did_you_mean() -> None:
    err = _one_error(Root, {"data": {"path": "p"}, "train": {"lrr": 0.1}})
    assert err == "train.lrr: unknown key (did you mean 'lr'?)"


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    err = _one_error(Train, {"zzzzzz": 1})
    assert "zzzzzz: unknown key" in err and "lr, steps, warmup, fp16" in err


def test_required_key_missing() -> None:
    assert _one_error(Root, {"data": {}}) == "data.path: required key missing"
    assert _one_error(Root, {}) == "data: required key missing"


def test_literal_lists_allowed_values() -> None:
    err = _one_error(Root, {"data": {"path": "p"}, "kind": "cascade"})
    assert err == "kind: expected one of 'distill', 'early_exit', got 'cascade' (str)"


def test_list_of_dataclasses_error_at_index() -> None:
    data = {"data": {"path": "p", "eval": [{"name": "a"}, {"name": "b", "split": "dev"}]}}
    assert _one_error(Root, data).startswith("data.eval[1].split: expected one of 'train'")


def test_containers() -> None:
    errs = _errors(Root, {"data": {"path": "p"}, "exits": [1, "x"], "labels": {"a": "b"}})
    assert errs[0].startswith("exits[1]: expected an integer")
    assert errs[1].startswith("labels.a: expected an integer")
    assert _one_error(Root, {"data": {"path": "p"}, "exits": 3}).startswith("exits: expected a list")
    assert _one_error(Root, {"data": "p"}).startswith("data: expected a mapping for Data")


def test_union_tries_members_in_order() -> None:
    assert from_dict(Root, {"data": {"path": "p"}, "width": 3}).width == 3
    assert from_dict(Root, {"data": {"path": "p"}, "width": [1, 2]}).width == [1, 2]
    err = _one_error(Root, {"data": {"path": "p"}, "width": "wide"})
    assert err == "width: expected int or list[int], got 'wide' (str)"


def test_optional_nested_dataclass_reports_inner_errors() -> None:
    err = _one_error(Root, {"data": {"path": "p"}, "teacher": {"steps": "many"}})
    assert err.startswith("teacher.steps: expected an integer")


def test_post_init_error_captured_with_path() -> None:
    err = _one_error(Root, {"data": {"path": "p"}, "train": {"steps": 5, "warmup": 9}})
    assert err.startswith("train: invalid Train:") and "warmup (9) must not exceed steps (5)" in err


def test_post_init_not_run_when_fields_are_bad() -> None:
    # warmup > steps would fail __post_init__, but the bad lr is reported alone.
    err = _one_error(Train, {"steps": 1, "warmup": 2, "lr": "x"})
    assert err.startswith("lr:")


def test_all_errors_reported_together() -> None:
    data = {
        "data": {"eval": [{"name": 1}]},
        "train": {"lr": "abc", "stpes": 3},
        "kind": "nope",
    }
    with pytest.raises(ConfigError) as info:
        from_dict(Root, data, source="recipes/x.yaml")
    errors = info.value.errors
    assert len(errors) == 5, errors
    paths = [e.split(":")[0] for e in errors]
    assert set(paths) == {"data.path", "data.eval[0].name", "train.lr", "train.stpes", "kind"}
    text = str(info.value)
    assert text.splitlines()[0] == "5 problems in recipes/x.yaml:"
    assert all(line.startswith("  ") for line in text.splitlines()[1:])
    assert isinstance(info.value, ValueError)


def test_config_error_singular_header_and_pickle() -> None:
    exc = ConfigError(["a: bad"], source="x.yaml")
    assert str(exc) == "1 problem in x.yaml:\n  a: bad"
    again = pickle.loads(pickle.dumps(exc))
    assert again.errors == ["a: bad"] and str(again) == str(exc)


def test_from_dict_needs_dataclass_type() -> None:
    with pytest.raises(TypeError):
        from_dict(dict, {})


# --------------------------------------------------------------------------------------------- overrides


def test_overrides_new_nested_list_and_types() -> None:
    base = {"train": {"lr": 0.1}, "name": "x"}
    out = apply_overrides(base, ["train.steps=3", "train.lr=5e-5", "a.b.c=[1, 2]", "name=null"])
    assert out == {"train": {"lr": "5e-5", "steps": 3}, "name": None, "a": {"b": {"c": [1, 2]}}}
    assert base == {"train": {"lr": 0.1}, "name": "x"}  # deep copy: input untouched
    assert from_dict(Train, out["train"]).lr == pytest.approx(5e-5)


def test_override_value_may_contain_equals() -> None:
    assert apply_overrides({}, ["note=a=b"]) == {"note": "a=b"}


@pytest.mark.parametrize("bad", ["train.lr", "=3", "a..b=1", "x=[1, 2"])
def test_bad_override_syntax(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, [bad])
    assert repr(bad) in info.value.errors[0]
    assert "command line" in str(info.value)


def test_override_through_non_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides({"train": {"lr": 0.1}}, ["train.lr.x=1", "ok=1", "=2"])
    assert len(info.value.errors) == 2
    assert "'train.lr'" in info.value.errors[0]


# --------------------------------------------------------------------------------------------- files


def test_load_yaml_syntax_error_has_line(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb: [1, 2\nc: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    text = str(info.value)
    assert str(path) in text and "line " in text and "column " in text


def test_load_yaml_syntax_error_exact_line(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb: 2\n  c: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert info.value.errors[0].startswith("line 3, column 4:")


@pytest.mark.parametrize(("content", "held"), [("- 1\n- 2\n", "a list"), ("", "empty"), ("3\n", "int")])
def test_load_yaml_requires_mapping(tmp_path, content: str, held: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert "must hold a mapping of keys to values" in str(info.value) and held in str(info.value)


def test_load_yaml_non_utf8(tmp_path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(path) in str(info.value) and "UTF-8" in str(info.value)


def test_load_yaml_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_yaml(tmp_path / "nope.yaml")


def test_load_yaml_reads_exponent_as_string(tmp_path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("lr: 5e-5\n", encoding="utf-8")
    assert load_yaml(path) == {"lr": "5e-5"}  # why float fields accept strings

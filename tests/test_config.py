"""Tests for summon.core.config: dataclass <-> dict <-> YAML with whole-tree validation, tagged unions and fields
typed by a sibling; and the typed run config built on them (model kinds, method_args, dry run, resume)."""

from __future__ import annotations

import dataclasses
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import pytest

from summon.cli.main import main as cli_main
from summon.core.config import (
    ConfigError,
    Tagged,
    apply_overrides,
    chosen_by,
    dump_yaml,
    from_dict,
    load_yaml,
    tagged_members,
    to_dict,
)
from summon.data.spec import DatasetSpec
from summon.methods.early_exit import EarlyExitConfig
from summon.methods.finetune import FinetuneConfig
from summon.methods.kd import KDConfig
from summon.models import ModelConfig, NgramModelConfig, PretrainedModelConfig, TruncatedModelConfig
from summon.training import recipe
from summon.training.checkpoint import Checkpointer, fixed_part, without_unused_model_fields
from summon.training.config import DataConfig, RunConfig, method_config


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


# --------------------------------------------------------------------------------------------- tagged unions


@dataclass(kw_only=True)
class Pet:
    kind: str = "dog"
    name: str = "rex"


@dataclass(kw_only=True)
class Dog(Pet):
    kind: Literal["dog"] = "dog"
    bark: int = 1


@dataclass(kw_only=True)
class Cat(Pet):
    kind: Literal["cat"] = "cat"
    lives: int = 9
    indoor: bool = True


@dataclass
class Home:
    pet: Annotated[Dog | Cat, Tagged("kind", default="dog")]
    pets: list[Annotated[Dog | Cat, Tagged("kind")]] = field(default_factory=list)


def test_tagged_union_selects_the_member_by_its_kind() -> None:
    home = from_dict(Home, {"pet": {"kind": "cat", "lives": 3}, "pets": [{"kind": "dog"}, {"kind": "cat"}]})
    assert home.pet == Cat(lives=3)
    assert [type(p) for p in home.pets] == [Dog, Cat]
    assert from_dict(Home, {"pet": {"bark": 2}}).pet == Dog(bark=2)  # the default kind
    assert from_dict(Home, to_dict(home)) == home
    assert to_dict(home)["pet"] == {"kind": "cat", "name": "rex", "lives": 3, "indoor": True}


def test_tagged_union_key_of_another_kind_is_named() -> None:
    err = _one_error(Home, {"pet": {"kind": "dog", "lives": 3}})
    assert err.startswith("pet.lives: unknown key for kind 'dog' ('lives' belongs to 'cat'; fields of 'dog': ")
    assert "kind, name, bark" in err


def test_tagged_union_typo_in_a_key_and_in_the_kind() -> None:
    assert _one_error(Home, {"pet": {"kind": "cat", "live": 3}}) == (
        "pet.live: unknown key for kind 'cat' (did you mean 'lives'?)")
    assert _one_error(Home, {"pet": {"kind": "cta"}}) == "pet.kind: unknown kind 'cta' (did you mean 'cat'?); kinds: dog, cat"
    assert _one_error(Home, {"pet": {"kind": "fish"}}) == "pet.kind: unknown kind 'fish'; kinds: dog, cat"


def test_tagged_union_without_a_default_needs_the_key_and_checks_members() -> None:
    assert _one_error(Home, {"pet": {}, "pets": [{"lives": 1}]}) == "pets[0].kind: required key missing (one of dog, cat)"
    assert _one_error(Home, {"pet": "cat"}).startswith("pet: expected a mapping with 'kind' (one of dog, cat)")
    assert _one_error(Home, {"pet": {"kind": "cat", "lives": "many"}}).startswith("pet.lives: expected an integer")


def test_tagged_members_lists_the_kinds() -> None:
    tag, members = tagged_members(Annotated[Dog | Cat, Tagged("kind")])
    assert tag.key == "kind" and members == {"dog": Dog, "cat": Cat}
    with pytest.raises(TypeError, match="Literal"):
        tagged_members(Annotated[Dog | Train, Tagged("kind")])


# --------------------------------------------------------------------------------------------- chosen by a sibling


ARGS = {"train": Train, "data": Data}


def _args_for(name: str) -> type:
    if name not in ARGS:
        raise ValueError(f"unknown thing {name!r}")
    return ARGS[name]


@dataclass
class Job:
    thing: str
    args: Any = field(default=None, metadata=chosen_by("thing", _args_for))


def test_field_typed_by_its_sibling() -> None:
    assert from_dict(Job, {"thing": "train", "args": {"lr": 0.5}}).args == Train(lr=0.5)
    assert from_dict(Job, {"thing": "train"}).args == Train()  # absent: every default filled in
    assert _errors(Job, {"thing": "data", "args": {"lr": 1}}) == [
        "args.lr: unknown key (valid keys: path, eval, max_len)", "args.path: required key missing"]
    assert _one_error(Job, {"thing": "data"}) == "args.path: required key missing"
    assert _one_error(Job, {"thing": "nope", "args": {"x": 1}}) == "thing: unknown thing 'nope'"
    assert _one_error(Job, {"thing": 3}).startswith("thing: expected a string")  # reported once, args skipped


# --------------------------------------------------------------------------------------------- run configs


def _recipe(tmp_path: Path, name: str, **sections: Any) -> str:
    raw = {"method": "kd", "output_dir": str(tmp_path / "run"), "teacher": "somewhere",
           "data": {"train": {"path": "train.jsonl", "task": "classification"}},
           "model": {"kind": "ngram", "num_buckets": 64}, **sections}
    dump_yaml(raw, tmp_path / f"{name}.yaml")
    return str(tmp_path / f"{name}.yaml")


def test_run_config_model_is_its_kinds_dataclass() -> None:
    assert type(recipe.load_run_config("sst2_kd_ngram").model) is NgramModelConfig
    truncated = recipe.load_run_config("sst2_kd_truncated").model
    assert type(truncated) is TruncatedModelConfig and truncated.first == 2
    for path in recipe.shipped().values():  # every shipped recipe validates against the typed kinds
        cfg = recipe.load_run_config(str(path))
        if cfg.trains_ensemble:  # an ensemble lists its candidates' models instead of one model
            members = [c.model for c in cfg.method_args.candidates]
            wanted = [c["model"]["kind"] for c in load_yaml(path)["method_args"]["candidates"]]
            assert [m.kind for m in members] == wanted and all(isinstance(m, ModelConfig) for m in members)
            continue
        assert isinstance(cfg.model, ModelConfig) and cfg.model.kind == load_yaml(path)["model"]["kind"]


def test_run_config_rejects_a_key_of_another_model_kind() -> None:
    with pytest.raises(ConfigError) as info:
        recipe.load_run_config("sst2_kd_ngram", ["model.first=2", "model.num_bucket=8"])
    assert info.value.errors[0].startswith("model.first: unknown key for kind 'ngram' ('first' belongs to 'truncated'")
    assert info.value.errors[1] == "model.num_bucket: unknown key for kind 'ngram' (did you mean 'num_buckets'?)"


def test_method_args_are_the_methods_dataclass_parsed_once(tmp_path) -> None:
    cfg = recipe.load_run_config(_recipe(tmp_path, "kd", method_args={"alpha": 0.9}))
    assert cfg.method_args == KDConfig(temperature=2.0, alpha=0.9)
    bare = recipe.load_run_config(_recipe(tmp_path, "bare"), ["method=finetune"])
    assert bare.method_args == FinetuneConfig()
    with pytest.raises(ConfigError, match=r"method_args: invalid KDConfig: alpha must be in \[0, 1\]"):
        recipe.load_run_config(_recipe(tmp_path, "bad", method_args={"alpha": 2.0}))
    with pytest.raises(ConfigError, match=r"method: unknown method 'kdd'\. Did you mean 'kd'\?"):
        recipe.load_run_config(_recipe(tmp_path, "typo"), ["method=kdd"])


def test_method_args_set_in_python_are_parsed_too() -> None:
    cfg = RunConfig(method="kd", output_dir="x", data=DataConfig(train=DatasetSpec(name="sst2")),
                    model=ModelConfig(kind="ngram"), method_args={"temperature": 4})
    assert cfg.method_args == KDConfig(temperature=4.0)
    assert method_config("kd", cfg.method_args) is cfg.method_args
    with pytest.raises(ConfigError, match=r"method_args\.temprature: unknown key"):
        method_config("kd", {"temprature": 1})
    with pytest.raises(TypeError, match="takes a KDConfig"):
        method_config("kd", FinetuneConfig())


def test_dry_run_shows_every_method_and_model_field_with_its_default(capsys) -> None:
    assert cli_main(["train", "sst2_early_exit", "--dry-run"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["method_args"] == to_dict(EarlyExitConfig())  # temperature is not in the recipe
    assert set(shown["model"]) == {f.name for f in dataclasses.fields(PretrainedModelConfig)}
    assert "num_buckets" not in shown["model"]


class FakeAccelerator:
    """What :class:`Checkpointer` asks of accelerate, without training anything."""

    is_main_process = True

    def __init__(self) -> None:
        self.loaded: str | None = None

    def wait_for_everyone(self) -> None:
        return None

    def save_state(self, path: str, safe_serialization: bool = True) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def load_state(self, path: str) -> None:
        self.loaded = path


def _checkpointer(tmp_path: Path, cfg: RunConfig) -> Checkpointer:
    return Checkpointer(tmp_path / "run" / "checkpoint", config=fixed_part(to_dict(cfg)))


def test_resume_compares_typed_configs_so_an_explicit_default_is_no_change(tmp_path) -> None:
    implicit = recipe.load_run_config(_recipe(tmp_path, "implicit"))
    _checkpointer(tmp_path, implicit).save(FakeAccelerator())
    explicit = recipe.load_run_config(_recipe(tmp_path, "explicit", method_args={"temperature": 2.0, "alpha": 0.5}),
                                      ["model.embed_dim=64", "model.kind=ngram"])
    assert _checkpointer(tmp_path, explicit).load(FakeAccelerator())
    changed = recipe.load_run_config(_recipe(tmp_path, "changed", method_args={"alpha": 0.9}))
    with pytest.raises(ValueError, match=r"another configuration \(method_args.alpha: 0.5 -> 0.9\)"):
        _checkpointer(tmp_path, changed).load(FakeAccelerator())


def test_resume_from_a_checkpoint_that_predates_typed_configs(tmp_path, caplog) -> None:
    cfg = recipe.load_run_config(_recipe(tmp_path, "now"))
    old = fixed_part(to_dict(cfg))
    old["method_args"] = {}  # the raw recipe dict was saved
    old["model"] = {**old["model"], "first": None, "pooling": "mean", "crf": False, "exits": None}  # every kind's
    checkpoint = tmp_path / "run" / "checkpoint"
    Checkpointer(checkpoint, config=old).save(FakeAccelerator())
    with caplog.at_level("WARNING"):
        assert _checkpointer(tmp_path, cfg).load(FakeAccelerator())
    assert "method_args.temperature" in caplog.text
    assert without_unused_model_fields(old, fixed_part(to_dict(cfg)))["model"] == fixed_part(to_dict(cfg))["model"]

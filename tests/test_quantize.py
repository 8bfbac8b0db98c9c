"""int8 stages: dynamic int8 quantisation of the linear layers of a plain predictor and of every staged kind.

Checks: every kind (and plain) quantizes and predicts; its ``nn.Linear`` layers are replaced; its answers stay
close to fp32; the calibration is never carried over and re-calibrating works; FLOPs and parameters count as
for fp32; save/load gives the same thresholds and probabilities; ``summon quantize`` end to end; bad input
(dtype, a damaged ``quantization`` section, a missing folder, a CUDA device) is refused naming what is wrong.
Models are tiny and untrained (the contract test's factories), so the checks are about plumbing.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from oracles import float_linears
from test_staged_contract import FACTORIES, LABELS, TAGGERS, _answer, _data, _save_plain, _texts
from toy import sentiment_rows, write_jsonl

import summon
from summon.adaptive.cascade import CascadePredictor
from summon.adaptive.cascade_stages import LocalStage
from summon.adaptive.kinds import KINDS
from summon.adaptive.remote import RemoteStage
from summon.cli.main import main
from summon.models import ModelConfig, build_model
from summon.models.quantize import Quantization, dynamic_linears
from summon.predictors.predictor import MANIFEST, WEIGHTS, Predictor, canonical_inputs, load_predictor


def plain(root) -> str:
    return _save_plain(ModelConfig(kind="random", name="tiny-bert", num_layers=2, max_length=32, init_seed=7),
                       root / "plain")


ALL = dict(FACTORIES)  # every kind, the plain one (a classifier and a tagger) included


def models(predictor) -> list:
    """The torch models of a predictor of any kind."""
    if isinstance(predictor, Predictor):
        return [predictor.model]
    holders = getattr(predictor, "stages", None) or predictor.members
    return [h.predictor.model for h in holders]


def full_logits(predictor, texts) -> np.ndarray:
    """Logits of the full model (the last stage at full depth; a plain predictor's own): [N, K], or a tagger's
    words of all sentences one after another [words, K]."""
    last = predictor.stage_logits(canonical_inputs(predictor.task, texts))[-1]
    return np.concatenate(list(last)) if last.dtype == object else last


@pytest.fixture(scope="module", params=sorted(ALL))
def pair(request, tmp_path_factory):
    """A saved fp32 predictor of each kind (loaded on the CPU) and its int8 copy."""
    path = ALL[request.param](tmp_path_factory.mktemp(request.param))
    fp32 = summon.load(path, device="cpu")
    return {"name": request.param, "path": path, "fp32": fp32, "int8": summon.quantize(fp32)}


def test_every_registered_kind_can_be_quantized():
    assert all(hasattr(KINDS.get(name).cls, "quantized") for name in KINDS), "give the new kind a quantized()"


def test_linear_layers_are_replaced_and_the_original_is_left_alone(pair):
    fp32, int8 = pair["fp32"], pair["int8"]
    assert type(int8) is type(fp32) and int8.quantization == Quantization.of("int8")
    for before, after in zip(models(fp32), models(int8), strict=True):
        assert float_linears(after) == 0 and dynamic_linears(after) == float_linears(before) > 0
        assert dynamic_linears(before) == 0
    assert fp32.quantization is None and "quantization" not in fp32.manifest
    assert str(int8.device) == "cpu"


def test_int8_answers_stay_close_to_fp32(pair):
    texts = _texts(40, 11)
    before, after = full_logits(pair["fp32"], texts), full_logits(pair["int8"], texts)
    assert (before.argmax(-1) == after.argmax(-1)).mean() >= 0.9
    np.testing.assert_allclose(after, before, atol=0.05 + 0.05 * np.abs(before).max())
    predictions = pair["int8"].predict(texts[:5])
    same_batch = full_logits(pair["int8"], texts[:5])  # dynamic int8 scales activations per batch: same rows
    if pair["name"] in TAGGERS:  # each word's tag is its logits' arg-max
        labels = pair["int8"].labels
        words = [t for p in predictions for t in p.tags]
        assert words == [labels[k] for k in same_batch.argmax(-1)]
    else:
        assert [p.label for p in predictions] == [LABELS[k] for k in same_batch.argmax(-1)]


def test_flops_and_parameters_count_as_for_fp32(pair):
    fp32, int8 = pair["fp32"], pair["int8"]
    examples = _data(30, 12, kind=pair["name"]).examples
    assert int8.measure_costs(examples, latency=False).flops == pytest.approx(
        fp32.measure_costs(examples, latency=False).flops, rel=1e-9)
    assert int8.num_parameters() == fp32.num_parameters()


def test_the_calibration_is_not_carried_over(pair, tmp_path):
    if pair["fp32"].num_stages == 1:
        pytest.skip("a one-stage predictor has no calibration to carry over")
    fp32 = summon.load(pair["path"], device="cpu")
    fp32.calibrate(_data(kind=pair["name"]), latency=False)
    again = summon.quantize(fp32)
    assert fp32.calibration is not None and again.calibration is None and "adaptive" not in again.manifest
    with pytest.raises(ValueError, match="needs a calibrated predictor"):
        again.predict(["good film"], budget=0.4)
    assert {p.stage for p in again.predict(_texts(8, 13))} == {again.num_stages - 1}  # no knob: the full model
    again.save(tmp_path / "uncalibrated")
    loaded = summon.load(tmp_path / "uncalibrated", device="cpu")
    assert loaded.calibration is None and loaded.quantization is not None


def test_recalibrated_int8_round_trips_through_save_and_load(pair, tmp_path):
    fp32, name = pair["fp32"], pair["name"]
    data = _data(kind=name) if fp32.num_stages > 1 else None
    int8 = summon.quantize(fp32, calibrate_on=data, max_drop=0.05 if data else None, latency=False)
    texts = _texts(20, 14)
    before = int8.predict(texts)
    int8.save(tmp_path / "int8")
    loaded = summon.load(tmp_path / "int8", device="cpu")
    assert type(loaded) is type(fp32) and loaded.quantization == int8.quantization
    for model in models(loaded):
        assert float_linears(model) == 0 and dynamic_linears(model) > 0
    if data is not None:
        assert loaded.calibration.to_dict() == int8.calibration.to_dict()
        assert int8.calibration.costs.flops == pytest.approx(fp32.measure_costs(data.examples, latency=False).flops)
    after = loaded.predict(texts)
    assert [_answer(p) for p in after] == [_answer(p) for p in before]
    np.testing.assert_array_equal([p.probs for p in after], [p.probs for p in before])
    section = json.loads((tmp_path / "int8" / MANIFEST).read_text())["quantization"]
    assert section["method"] == "dynamic" and section["dtype"] == "qint8" and section["modules"] == "Linear"
    if name in ("plain", "early_exit"):  # the fp32 weights are saved as they were: same bytes, same fingerprint
        assert loaded.fingerprint == fp32.fingerprint
        assert loaded.manifest["files"][WEIGHTS] == fp32.manifest["files"][WEIGHTS]


def test_quantize_with_out_saves_and_returns_what_loads(pair, tmp_path):
    fp32 = pair["fp32"]
    data = _data(kind=pair["name"]) if fp32.num_stages > 1 else None
    loaded = summon.quantize(pair["path"], calibrate_on=data, out=tmp_path / "q", latency=False)
    assert loaded.path == tmp_path / "q" and loaded.quantization is not None
    if data is not None:
        assert loaded.calibration is not None and loaded.calibration.data == data.source
    twice = summon.load(tmp_path / "q", device="auto")  # "auto" is the CPU for int8, on any machine
    assert str(twice.device) == "cpu"
    np.testing.assert_array_equal(full_logits(twice, _texts(6, 15)), full_logits(loaded, _texts(6, 15)))


def test_a_saved_int8_predictor_refuses_a_cuda_device(pair, tmp_path):
    path = tmp_path / "q"
    summon.quantize(pair["fp32"]).save(path)
    with pytest.raises(ValueError, match="runs on the CPU only") as err:
        summon.load(path, device="cuda")
    assert str(path / MANIFEST) in str(err.value)
    if hasattr(pair["int8"], "to"):
        with pytest.raises(ValueError, match="runs on the CPU only"):
            pair["int8"].to("cuda")


# --- a cascade with a remote stage ------------------------------------------------------------------------


def test_a_remote_cascade_stage_is_left_as_it_is_and_said_so(tmp_path, caplog):
    local = load_predictor(plain(tmp_path), device="cpu")
    remote = RemoteStage(url="http://127.0.0.1:9", name="teacher", task="classification", labels=LABELS,
                         flops_per_example=1e6)
    cascade = CascadePredictor([LocalStage("student", local, str(tmp_path / "plain")), remote], "classification",
                               LABELS)
    with caplog.at_level(logging.WARNING, logger="summon"):
        int8 = summon.quantize(cascade)
    assert int8.stages[1] is remote and dynamic_linears(int8.stages[0].predictor.model) > 0
    assert "stage 1 ('teacher') is remote (http://127.0.0.1:9): left as it is" in caplog.text


# --- bad input --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A plain fp32 predictor, its int8 copy and an int8 cascade, saved once."""
    root = tmp_path_factory.mktemp("bad_quantize")
    fp32 = plain(root)
    summon.quantize(fp32, out=root / "int8")
    summon.quantize(FACTORIES["cascade"](root), out=root / "int8_cascade")
    return root


def _edit_section(path: Path, **changes) -> None:
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    manifest["quantization"] = {**manifest["quantization"], **changes}
    (path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def test_an_unknown_dtype_is_refused(saved):
    with pytest.raises(ValueError, match=r"dtype must be 'int8' .*got 'int4'"):
        summon.quantize(str(saved / "plain"), dtype="int4")


@pytest.mark.parametrize("folder", ["int8", "int8_cascade"])
@pytest.mark.parametrize("key,value", [("dtype", "int4"), ("method", "static"), ("modules", "Conv2d")])
def test_a_manifest_with_a_bad_quantization_section_names_the_file_and_key(saved, tmp_path, folder, key, value):
    copy = Path(shutil.copytree(saved, tmp_path / "copy"))
    _edit_section(copy / folder, **{key: value})
    with pytest.raises(ValueError) as err:
        summon.load(copy / folder, device="cpu")
    message = str(err.value)
    assert str(copy / folder / MANIFEST) in message and f"'quantization.{key}'" in message and repr(value) in message


def test_quantizing_twice_or_into_its_own_folder_is_refused(saved):
    int8 = summon.load(saved / "int8", device="cpu")
    with pytest.raises(ValueError, match="is int8 already"):
        summon.quantize(int8)
    with pytest.raises(ValueError, match="folder of the predictor being quantized"):
        summon.quantize(str(saved / "plain"), out=saved / "plain")
    with pytest.raises(ValueError, match="has no stages to calibrate"):
        summon.quantize(str(saved / "plain"), calibrate_on=_data())
    with pytest.raises(ValueError, match="give calibrate_on="):
        summon.quantize(str(saved / "plain"), budget=0.5)


# --- the command line -------------------------------------------------------------------------------------


def test_summon_quantize_calibrates_saves_and_predicts(tmp_path, capsys):
    exits = FACTORIES["early_exit"](tmp_path)
    cal = write_jsonl(tmp_path / "cal.jsonl", sentiment_rows(120, 3))
    out = tmp_path / "int8"
    assert main(["quantize", exits, str(out), "--data", str(cal), "--no-latency", "--max-drop", "0.05",
                 "--table-rows", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"quantized {exits} (early_exit): " in printed and "linear layers dynamic int8 (qint8" in printed
    assert "default operating point (max_drop 0.05)" in printed and f"int8 predictor written to {out}" in printed
    assert main(["predict", str(out), "a good film", "--max-drop", "0.05"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["label"] in LABELS and "stage" in row and "cost" in row
    assert summon.load(out, device="cpu").calibration.spec.value == 0.05


def test_summon_quantize_without_data_saves_an_uncalibrated_predictor(tmp_path, capsys):
    exits = FACTORIES["early_exit"](tmp_path)
    out = tmp_path / "int8"
    assert main(["quantize", exits, str(out), "--calibrate-data", str(tmp_path / "none.jsonl")]) == 2
    capsys.readouterr()
    assert main(["quantize", exits, str(out)]) == 0
    assert "uncalibrated: the fp32 calibration is not carried over" in capsys.readouterr().out
    assert main(["predict", str(out), "fine", "--budget", "0.4"]) == 2
    assert "needs a calibrated predictor" in capsys.readouterr().err
    assert main(["predict", str(out), "fine"]) == 0


@pytest.mark.parametrize("argv,expected", [
    (["--dtype", "int4"], "argument --dtype: invalid choice: 'int4'"),
    (["--max-drop", "0.05"], "--max-drop sets how the int8 copy is calibrated; give --data SPLIT"),
    (["--device", "cuda"], "--device: dynamic int8 quantisation ('quantization') runs on the CPU only"),
])
def test_summon_quantize_refuses_bad_flags(saved, tmp_path, capsys, argv, expected):
    assert main(["quantize", str(saved / "plain"), str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_summon_quantize_names_a_missing_model_folder(tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    assert main(["quantize", str(missing), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"summon: error: {missing}: no such predictor directory")


def test_summon_export_refuses_an_int8_predictor(saved, tmp_path, capsys):
    assert main(["export", str(saved / "int8"), str(tmp_path / "hf")]) == 2
    assert "it is int8 (dynamic qint8 linear layers)" in capsys.readouterr().err


def test_an_int8_teacher_does_not_reuse_its_fp32_teachers_cached_outputs(tmp_path):
    """The int8 copy keeps its fp32 weights' fingerprint, so the teacher cache must key on the quantization too."""
    from summon.data.spec import TaskData
    from summon.training.teacher_cache import teacher_logits

    built = build_model(ModelConfig(kind="ngram", num_buckets=512, embed_dim=8, init_seed=5), "classification", 2)
    fp32 = Predictor(built.model, built.featurizer, "classification", ["neg", "pos"],
                     {"architecture": built.architecture})
    data = TaskData("classification", ["neg", "pos"], [{"text": f"text {i}", "label": i % 2} for i in range(6)], "toy")
    teacher_logits(fp32, data, cache_dir=tmp_path)
    teacher_logits(fp32.quantized(), data, cache_dir=tmp_path)
    assert len(list((tmp_path / "teacher").glob("*.safetensors"))) == 2

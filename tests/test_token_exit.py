"""Early exit for taggers (:mod:`summon.adaptive.token_exit`): the parts the generic staged contract does not see.

Checks: a sentence's score from its words' (min, mean, path) equals a plain loop, and ``path`` of ``max_prob`` is
the best tag path's probability; word logits are gathered at word starts, NaN past a row's words and certain of
label 0 where truncation cut words; sequence ids are equal exactly when whole tag sequences are; the token
calibration fits one temperature per exit on word NLL, keeps its ``max_drop`` promise on the threshold rows,
refuses sentence-only scorers and misaligned tags, and survives JSON; a tiny tagger trained with ``early_exit``
loads as a token-exit predictor, reports F1 per exit, calibrates (API and CLI) and predicts tags with a stage.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from toy import run_config, tagging_files

import summon
from summon.adaptive.calibration import (
    Calibration,
    CalibrationSpec,
    fit_temperature,
    fit_token_calibration,
    split_rows,
)
from summon.adaptive.policies import POLICIES, sentence_score
from summon.adaptive.scoring import TokenReadout, pad_words, sequence_ids, token_view
from summon.adaptive.thresholds import exit_stage
from summon.adaptive.token_exit import CUT_LOGIT, TokenExitPredictor, word_logits
from summon.cli.main import main
from summon.measure.stage_costs import StageCosts
from summon.predictors.saved import read_manifest
from summon.training.loop import train

# --- 1. a sentence's score from its words' ------------------------------------------------------------------


def _naive_sentence_score(scores: np.ndarray, mask: np.ndarray, how: str) -> np.ndarray:
    out = []
    for row, keep in zip(scores, mask, strict=True):
        words = [float(s) for s, k in zip(row, keep, strict=True) if k]
        if not words:
            out.append(1.0)
        elif how == "min":
            out.append(min(words))
        elif how == "mean":
            out.append(sum(words) / len(words))
        else:
            product = 1.0
            for s in words:
                product *= s
            out.append(product)
    return np.asarray(out)


@pytest.mark.parametrize("how", ["min", "mean", "path"])
def test_sentence_score_equals_a_loop_over_each_rows_words(how):
    gen = np.random.default_rng(0)
    scores = gen.uniform(0.05, 1.0, size=(9, 6))
    lengths = np.array([6, 1, 0, 3, 5, 2, 6, 4, 0])  # rows 2 and 8 have no words
    mask = np.arange(6)[None, :] < lengths[:, None]
    got = sentence_score(torch.from_numpy(scores), torch.from_numpy(mask), how).numpy()
    np.testing.assert_allclose(got, _naive_sentence_score(scores, mask, how), rtol=1e-12)
    assert got[2] == got[8] == 1.0
    empty = sentence_score(torch.zeros(3, 0, dtype=torch.float64), torch.zeros(3, 0, dtype=torch.bool), how)
    assert empty.tolist() == [1.0, 1.0, 1.0]


def test_sentence_score_refuses_an_unknown_reduction():
    with pytest.raises(ValueError, match="min, mean, path"):
        sentence_score(torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool), "max")


def test_path_of_max_prob_is_the_best_tag_paths_probability():
    gen = np.random.default_rng(1)
    logits = torch.from_numpy(gen.normal(size=(4, 5, 3)) * 2)
    lengths = [5, 3, 1, 4]
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
    probs = logits.softmax(dim=-1)
    word_scores, _ = POLICIES["max_prob"](probs, None)
    got = sentence_score(word_scores, mask, "path")
    for i, n in enumerate(lengths):
        best = 1.0
        for w in range(n):
            best *= float(probs[i, w].max())
        # brute force over every tag path of the row: the best one's probability (independent softmax tags)
        paths = torch.cartesian_prod(*[torch.arange(3)] * n) if n > 1 else torch.arange(3)[:, None]
        brute = max(float(np.prod([float(probs[i, w, t]) for w, t in enumerate(path)])) for path in paths)
        assert float(got[i]) == pytest.approx(best, rel=1e-12) == pytest.approx(brute, rel=1e-12)


# --- 2. word logits -------------------------------------------------------------------------------------------


def test_word_logits_gather_word_starts_and_make_cut_words_certain_of_label_0():
    gen = torch.Generator().manual_seed(0)
    token = torch.randn(3, 7, 4, generator=gen)
    starts = torch.tensor([[1, 2, 4], [1, 3, 0], [2, 0, 0]])  # padded with 0 past the kept words
    kept = torch.tensor([3, 2, 1])
    words = torch.tensor([3, 4, 1])  # row 1: 4 words in the input, 2 kept after truncation
    out = word_logits(token, starts, kept, words)
    assert out.shape == (3, 4, 4)
    torch.testing.assert_close(out[0, :3], token[0, [1, 2, 4]])
    torch.testing.assert_close(out[1, :2], token[1, [1, 3]])
    torch.testing.assert_close(out[2, 0], token[2, 2])
    assert out[1, 2:].tolist() == [[0.0, CUT_LOGIT, CUT_LOGIT, CUT_LOGIT]] * 2
    assert torch.isnan(out[0, 3]).all() and torch.isnan(out[2, 1:]).all()
    assert not torch.isnan(out[0, :3]).any() and not torch.isnan(out[1]).any()

    readout = TokenReadout("max_prob", [1.0], 4)
    rows = readout.rows_of(out)
    assert [r.shape for r in rows] == [(3, 4), (4, 4), (1, 4)]
    np.testing.assert_allclose(rows[1][:2], token[1, [1, 3]].numpy())
    assert rows[1][2:, 0].tolist() == [0.0, 0.0]
    # the cut words are sure of label 0, so they never lower the sentence's score
    _, score, _ = readout(0, out)
    kept_scores = token[1, [1, 3]].double().softmax(-1).max(-1).values
    assert float(score[1]) == pytest.approx(float(kept_scores.min()), rel=1e-9)
    assert [len(r) for r in readout.rows_of(word_logits(token[:0], starts[:0], kept[:0], words[:0]))] == []


# --- 3. sequence ids ------------------------------------------------------------------------------------------


def test_sequence_ids_are_equal_exactly_when_whole_tag_sequences_are():
    tags = [[np.array([0, 1]), np.array([1]), np.array([], np.int64), np.array([0, 1])],
            [np.array([0, 1], np.int32), np.array([2]), np.array([], np.int64), np.array([0, 1, 0])],
            [np.array([0, 2]), np.array([1]), np.array([], np.int64), np.array([0])]]
    gold = [np.array([0, 2]), np.array([2]), np.array([], np.int64), np.array([1, 1])]
    preds, gold_ids = sequence_ids(tags, gold)
    assert preds.tolist() == [[0, 0, 1], [0, 1, 0], [0, 0, 0], [0, 1, 2]]
    assert gold_ids.tolist() == [1, 1, 0, 3]
    assert sequence_ids(tags)[1] is None

    gen = np.random.default_rng(2)
    lengths = gen.integers(0, 4, size=30)
    many = [[gen.integers(0, 2, size=n) for n in lengths] for _ in range(4)]
    truth = [gen.integers(0, 2, size=n) for n in lengths]
    preds, gold_ids = sequence_ids(many, truth)
    for i in range(30):
        seqs = [many[k][i] for k in range(4)] + [truth[i]]
        ids = [*preds[i], gold_ids[i]]
        for a in range(5):
            for b in range(5):
                assert (ids[a] == ids[b]) == np.array_equal(seqs[a], seqs[b])


# --- 4. the token calibration ---------------------------------------------------------------------------------

K = 3
COSTS = StageCosts(flops=[1.0, 2.0, 3.0], flops_full=3.0)


def _tagger_logits(n: int = 80, seed: int = 3) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
    """Per stage, noisy word logits that grow surer of the gold tag with depth, each over-confident: a word's
    calibrated logits are ``signal * (signal * onehot + noise)``, which the stage scales by ``scale / signal``."""
    gen = np.random.default_rng(seed)
    gold = [gen.integers(0, K, size=int(gen.integers(1, 7))) for _ in range(n)]
    raws = []
    for k, (signal, scale) in enumerate([(0.8, 3.0), (1.5, 4.5), (2.5, 7.5)]):
        raws.append([(signal * np.eye(K)[g] + gen.normal(size=(len(g), K))) * scale + 0.01 * k for g in gold])
    return raws, gold


def test_token_calibration_fits_word_temperatures_and_keeps_its_max_drop_on_the_threshold_rows():
    raws, gold = _tagger_logits()
    spec = CalibrationSpec(rule="max_drop", value=0.1)
    cal = fit_token_calibration(raws, gold, COSTS, spec, num_labels=K, data="toy")
    assert cal.token_reduce == "min" and cal.policy == "max_prob" and len(cal.temperatures) == 3
    assert cal.rows == {"temperature": 24, "thresholds": 56, "seed": 0}

    fit_rows, test_rows = split_rows(80, spec.temperature_fraction, spec.seed)
    fit_gold = torch.from_numpy(np.concatenate([gold[i] for i in fit_rows]))
    for k in range(3):  # word-level NLL on the temperature sentences' words
        words = torch.from_numpy(np.concatenate([raws[k][i] for i in fit_rows]))
        assert cal.temperatures[k] == pytest.approx(fit_temperature(words, fit_gold), rel=1e-6)
    assert cal.temperatures == pytest.approx([3.75, 3.0, 3.0], rel=0.25)  # each stage's over-confidence

    # replay the default point on the threshold rows: the share of sentences whose tags differ from the last exit's
    readout = cal.readout(K)
    assert isinstance(readout, TokenReadout) and readout.reduce == "min"
    view = token_view([[r[i] for i in test_rows] for r in raws], readout)
    stage = exit_stage(view["scores"], cal.default.threshold)
    differ = [not np.array_equal(view["tags"][s][i], view["tags"][-1][i]) for i, s in enumerate(stage)]
    assert np.mean(differ) == pytest.approx(cal.default.point.disagreement) and np.mean(differ) <= 0.1
    assert np.bincount(stage, minlength=3).tolist() == cal.default.point.exit_counts
    assert cal.default.point.cost < 1.0  # the drop allowed buys something on this data


@pytest.mark.parametrize("policy", ["patience", "learned", "gate", "defer"])
def test_token_calibration_refuses_sentence_only_scorers_naming_the_word_scorers(policy):
    raws, gold = _tagger_logits(40)
    with pytest.raises(ValueError, match=f"{policy}.*max_prob, margin, entropy"):
        fit_token_calibration(raws, gold, COSTS, CalibrationSpec(policy=policy), num_labels=K)


def test_token_calibration_refuses_tags_that_do_not_match_the_words():
    raws, gold = _tagger_logits(40)
    gold[7] = np.append(gold[7], 0)
    with pytest.raises(ValueError, match=rf"sentence 7: {len(raws[0][7])} words of logits for {len(gold[7])} gold"):
        fit_token_calibration(raws, gold, COSTS, CalibrationSpec(), num_labels=K)
    with pytest.raises(ValueError, match=r"\[39, 39, 39\] sentences for 40"):
        fit_token_calibration([r[:39] for r in raws], _tagger_logits(40)[1], COSTS, CalibrationSpec(), num_labels=K)


def test_token_calibration_round_trips_through_json_with_its_reduction():
    raws, gold = _tagger_logits()
    cal = fit_token_calibration(raws, gold, COSTS, CalibrationSpec(token_reduce="path", policy="entropy"),
                                num_labels=K)
    saved = json.loads(json.dumps(cal.to_dict()))
    assert saved["token_reduce"] == "path"
    again = Calibration.from_dict(saved)
    assert again.token_reduce == "path" and again.spec.token_reduce == "path"
    assert again.to_dict() == saved
    readout = again.readout(K)
    assert isinstance(readout, TokenReadout) and (readout.policy, readout.reduce) == ("entropy", "path")
    padded = pad_words(raws[0][:5], K)
    torch.testing.assert_close(readout(0, padded)[1], cal.readout(K)(0, padded)[1])


# --- 5-7. a tiny tagger trained with early_exit ---------------------------------------------------------------

TINY_EXITS = {"kind": "random", "name": "tiny-bert", "num_layers": 3, "exits": "all", "max_length": 32,
              "init_seed": 7}


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    root = tmp_path_factory.mktemp("token_exit")
    train_path, dev_path = tagging_files(root)
    cfg = run_config(root / "run", train_path, dev_path, task="token_classification", method="early_exit",
                     model=TINY_EXITS, epochs=1)
    return {"model": train(cfg), "dev": dev_path, "root": root}


def test_early_exit_training_saves_a_token_exit_predictor_with_f1_per_exit(tagger):
    manifest = read_manifest(tagger["model"])
    assert manifest["training"]["method"] == "early_exit"
    metrics = manifest["metrics"]["eval"]
    assert len(metrics["exit_f1"]) == 3 and all(0.0 <= f <= 1.0 for f in metrics["exit_f1"])
    assert metrics["exit_f1"][-1] == pytest.approx(metrics["f1"])  # the last exit is the full tagger
    predictor = summon.load(tagger["model"], device="cpu")
    assert isinstance(predictor, TokenExitPredictor) and predictor.num_stages == 3


def test_calibrated_tagger_predicts_tags_spans_stage_and_cost(tagger, tmp_path):
    model = shutil.copytree(tagger["model"], tmp_path / "model")
    predictor = summon.load(model, device="cpu")
    cal = summon.calibrate(predictor, str(tagger["dev"]), max_drop=0.1, latency=False)
    assert cal.token_reduce == "min" and len(cal.temperatures) == 3 and cal.rows["thresholds"] > 0
    loaded = summon.load(model, device="cpu")
    assert loaded.calibration.to_dict() == json.loads(json.dumps(cal.to_dict()))
    fractions = loaded.stage_fractions(None)
    for budget in (fractions[0], 1.0):
        pred = loaded.predict(["man woman the city"], budget=budget)[0]
        assert pred.tokens == ["man", "woman", "the", "city"] and len(pred.tags) == 4
        assert set(pred.tags) <= set(loaded.labels) and isinstance(pred.spans, list)
        assert pred.stage in range(3) and pred.cost == pytest.approx(fractions[pred.stage])
    assert loaded.predict(["man woman the city"], budget=fractions[0])[0].stage == 0  # only the first exit fits


def test_a_margin_score_with_mean_reduction_calibrates_and_predicts(tagger):
    predictor = summon.load(tagger["model"], device="cpu")
    cal = summon.calibrate(predictor, str(tagger["dev"]), policy="margin", token_reduce="mean", max_drop=0.1,
                           latency=False, save=False)
    assert (cal.policy, cal.token_reduce) == ("margin", "mean")
    readout = predictor.readout()
    assert isinstance(readout, TokenReadout) and (readout.policy, readout.reduce) == ("margin", "mean")
    preds = predictor.predict(["man woman the city", "the bank"], threshold=-np.inf)
    assert [p.stage for p in preds] == [0, 0] and [len(p.tags) for p in preds] == [4, 2]
    again = predictor.predict(["man woman the city", "the bank"], threshold=np.inf)
    assert [p.stage for p in again] == [2, 2]
    long = " ".join(["man", "the"] * 25)  # 50 words, past max_length 32: the cut words are tagged label 0
    for threshold in (-np.inf, np.inf):
        pred = predictor.predict([long], threshold=threshold)[0]
        assert len(pred.tags) == 50 and pred.tags[32:] == [predictor.labels[0]] * 18


def test_cli_calibrate_with_token_reduce_path_saves_it(tagger, tmp_path, capsys):
    model = shutil.copytree(tagger["model"], tmp_path / "model")
    assert main(["calibrate", str(model), "--data", str(tagger["dev"]), "--no-latency", "--token-reduce", "path"]) == 0
    adaptive = read_manifest(model)["adaptive"]
    assert adaptive["token_reduce"] == "path" and adaptive["spec"]["token_reduce"] == "path"
    assert summon.load(model, device="cpu").readout().reduce == "path"


def test_token_reduce_on_a_sentence_predictor_is_refused(tmp_path):
    built = summon.models.build_model(summon.models.ModelConfig(kind="random", name="tiny-bert", num_layers=2,
                                                                exits="all", max_length=16), "classification", 2)
    summon.predictors.predictor.Predictor(built.model, built.featurizer, "classification", ["a", "b"],
                               {"architecture": built.architecture}).save(tmp_path / "m",
                                                                          architecture=built.architecture)
    data = summon.data.spec.TaskData("classification", ["a", "b"], [{"text": f"w{i}", "label": i % 2}
                                                                    for i in range(40)], "toy")
    with pytest.raises(ValueError, match=r"token_reduce='path'.*leave token_reduce out"):
        summon.calibrate(str(tmp_path / "m"), data, token_reduce="path", latency=False)

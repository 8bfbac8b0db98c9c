"""Tests for summon.data: local files, specs, the catalog, the hub path, featurizers and collation."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from toy import FIXTURE_DATA

from summon.data import (
    CATALOG,
    IGNORE_INDEX,
    DatasetSpec,
    FeatureDataset,
    NgramFeaturizer,
    TaskData,
    TokenizerFeaturizer,
    collate,
    infer_labels,
    load_split,
)
from summon.data import features as features_module
from summon.data.features import CHARS_PER_TOKEN
from summon.models.tiny import tiny_tokenizer

SHARED_DATA = Path("/work/shared/data")

# --- helpers --------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def load(path: Path, task: str = "classification", **kw: Any) -> TaskData:
    return load_split(DatasetSpec(path=str(path), task=task, **kw))


def raises_at(path: Path, line: int | None, *hints: str):
    """``pytest.raises`` for a ValueError starting ``PATH:LINE:`` (or ``PATH:``) and containing every hint."""
    head = re.escape(f"{path}:{line}:" if line is not None else f"{path}:")
    return pytest.raises(ValueError, match="^" + head + "".join(f"(?=.*{re.escape(h)})" for h in hints))


@pytest.fixture(scope="module")
def tokenizer():
    from summon.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "sst2" / "dev.jsonl").is_file():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


SENTIMENT = [("a fine film , truly", "pos"), ("boring", "neg"), ('he said "no"', "neg"), ("great fun", "pos")]
EXPECTED = [{"text": t, "label": {"neg": 0, "pos": 1}[y]} for t, y in SENTIMENT]


# --- 1. local files -------------------------------------------------------------------------------


def test_jsonl_csv_tsv_and_gz_load_to_the_same_examples(tmp_path):
    jsonl = write_jsonl(tmp_path / "d.jsonl", [{"text": t, "label": y} for t, y in SENTIMENT])
    csv_lines = ["text,label"] + ['"' + t.replace('"', '""') + f'",{y}' for t, y in SENTIMENT]
    (tmp_path / "d.csv").write_text("\n".join(csv_lines) + "\n", encoding="utf-8")
    (tmp_path / "d.tsv").write_text(
        "text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in SENTIMENT).replace('"', "")
    )
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(jsonl.read_bytes()))
    for name in ("d.jsonl", "d.csv", "d.jsonl.gz"):
        data = load(tmp_path / name, labels=["neg", "pos"])
        assert data.examples == EXPECTED, name
        assert data.labels == ["neg", "pos"] and data.task == "classification"
    tsv = load(tmp_path / "d.tsv", labels=["neg", "pos"])  # TSV written without quotes: same text minus '"'
    assert tsv.examples == [dict(e, text=e["text"].replace('"', "")) for e in EXPECTED]


def test_format_option_overrides_the_extension(tmp_path):
    (tmp_path / "d.txt").write_text("text\tlabel\ngood\t1\n")
    assert load(tmp_path / "d.txt", labels=["n", "p"], format="tsv").examples == [
        {"text": "good", "label": 1}
    ]


def test_column_mapping_renames_and_drops_other_columns(tmp_path):
    rows = [{"id": 7, "sentence": "good", "polarity": "pos"}, {"id": 8, "sentence": "bad", "polarity": "neg"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = load(path, columns={"text": "sentence", "label": "polarity"})
    assert data.examples == [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]
    assert data.labels == ["neg", "pos"]


def test_string_labels_follow_the_given_label_order(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "label": "pos"}, {"text": "y", "label": "neg"}])
    data = load(path, labels=["pos", "neg"])  # not sorted order: ids must follow the given list
    assert [e["label"] for e in data.examples] == [0, 1]
    assert data.labels == ["pos", "neg"]


def test_integer_labels_are_kept_and_inferred_as_0_to_max(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "label": 3}, {"text": "y", "label": 0}])
    data = load(path)
    assert data.labels == ["0", "1", "2", "3"]  # gaps included, numeric order
    assert [e["label"] for e in data.examples] == [3, 0]
    named = load(path, labels=["a", "b", "c", "d"])
    assert [e["label"] for e in named.examples] == [3, 0] and named.labels == ["a", "b", "c", "d"]


def test_csv_digit_string_labels_become_integer_ids(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\ngood,1\nbad,0\n")
    data = load(tmp_path / "d.csv", labels=["neg", "pos"])
    assert data.examples == [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]
    assert all(type(e["label"]) is int for e in data.examples)


def test_csv_digit_labels_infer_the_same_label_set_as_jsonl_ints(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"row {i},{i}\n" for i in range(12)))
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"row {i}", "label": i} for i in range(12)])
    from_csv, from_jsonl = load(tmp_path / "d.csv"), load(path)
    assert from_jsonl.labels == [str(i) for i in range(12)]
    assert from_csv.labels == from_jsonl.labels
    assert from_csv.examples == from_jsonl.examples


def test_infer_labels_sorts_strings_and_puts_O_first_for_tags():
    assert infer_labels(
        [{"label": "b"}, {"label": "c"}, {"label": "a"}, {"text": "unlabelled"}], "classification"
    ) == ["a", "b", "c"]
    tags = [{"tokens": ["x"] * 3, "tags": ["B-PER", "O", "I-PER"]}, {"tokens": ["y"], "tags": ["B-LOC"]}]
    assert infer_labels(tags, "token_classification") == ["O", "B-LOC", "B-PER", "I-PER"]
    with pytest.raises(ValueError, match=r"no labels found.*'labels:'"):
        infer_labels([{"text": "x"}], "classification")


def test_limit_keeps_the_first_rows_and_shuffle_seed_is_deterministic(tmp_path):
    rows = [{"text": f"row {i}", "label": i % 2} for i in range(20)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert [e["text"] for e in load(path, limit=5).examples] == [f"row {i}" for i in range(5)]
    shuffled = load(path, shuffle_seed=3).examples
    expected = [dict(r) for r in rows]
    random.Random(3).shuffle(expected)
    assert shuffled == expected and shuffled != rows
    first5 = load(path, shuffle_seed=3, limit=5).examples
    assert first5 == expected[:5] == load(path, shuffle_seed=3, limit=5).examples
    assert load(path, shuffle_seed=4, limit=5).examples != first5


def test_pair_classification(tmp_path):
    rows = [{"premise": "a man sleeps", "hypothesis": "a man is awake", "y": "contradiction"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = load(
        path,
        task="pair_classification",
        labels=["entailment", "contradiction"],
        columns={"text": "premise", "text_pair": "hypothesis", "label": "y"},
    )
    assert data.examples == [{"text": "a man sleeps", "text_pair": "a man is awake", "label": 1}]


def test_token_classification_maps_tags_to_ids(tmp_path):
    rows = [
        {"tokens": ["John", "lives", "in", "Rome"], "tags": ["B-PER", "O", "O", "B-LOC"]},
        {"tokens": ["Hi"], "tags": ["O"]},
    ]
    data = load(write_jsonl(tmp_path / "d.jsonl", rows), task="token_classification")
    assert data.labels == ["O", "B-LOC", "B-PER"]
    assert data.examples == [
        {"tokens": ["John", "lives", "in", "Rome"], "tags": [2, 0, 0, 1]},
        {"tokens": ["Hi"], "tags": [0]},
    ]


def test_unlabelled_rows_load_when_labels_are_not_required(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}])
    data = load_split(
        DatasetSpec(path=str(path), task="classification", labels=["n", "p"]), require_labels=False
    )
    assert data.examples == [{"text": "a"}, {"text": "b"}] and not data.has_labels
    with raises_at(path, 1, "missing column 'label'"):
        load(path, labels=["n", "p"])


# --- 2. bad input ---------------------------------------------------------------------------------


def test_missing_column_lists_the_row_columns_and_suggests_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok", "label": 0}, {"sentence": "x", "label": 1}])
    with raises_at(path, 2, "missing column 'text'", "The row has: sentence, label", "columns: {text:"):
        load(path)


def test_unknown_canonical_key_in_columns_suggests_the_right_one(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"sentence": "x", "label": 1}])
    with raises_at(path, None, "'txt'", "Did you mean 'text'?", "Map these: text, label"):
        load(path, columns={"txt": "sentence"})


@pytest.mark.parametrize("content", [b"", b"\n\n   \n\t\n"], ids=["empty", "blank-lines"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with raises_at(path, None, "the file is empty"):
        load(path)


def test_header_only_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n\n")
    with raises_at(path, None, "no data rows", "Add at least one row"):
        load(path)


def test_label_outside_the_label_set(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"text": "a", "label": "neg"}, {"text": "b", "label": "neutral"}]
    )
    with raises_at(path, 2, "label 'neutral' is not in the label set (neg, pos", "labels: [...]"):
        load(path, labels=["neg", "pos"])
    ints = write_jsonl(tmp_path / "i.jsonl", [{"text": "a", "label": 2}])
    with raises_at(ints, 1, "label 2 is not in the label set"):
        load(ints, labels=["neg", "pos"])


def test_malformed_json_names_the_right_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 0}\n\n{"text": "b", "label": 1\n{"text": "c", "label": 0}\n')
    with raises_at(path, 3, "malformed JSON", "one JSON object"):
        load(path)


def test_json_line_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, ["b", 1]])
    with raises_at(path, 2, "expected a JSON object per line, got list"):
        load(path)


def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes('{"text": "ok", "label": 0}\n{"text": "caf\xe9", "label": 1}\n'.encode("latin-1"))
    with raises_at(path, 2, "not UTF-8", "Re-save the file as UTF-8"):
        load(path)


def test_csv_row_with_the_wrong_number_of_fields(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\ngood,1\nbad, awful,0\n")
    with raises_at(path, 3, "3 fields but the header has 2 (text, label)", "Quote fields"):
        load(path)


def test_tokens_and_tags_of_different_lengths(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"tokens": ["a", "b", "c"], "tags": ["O", "O"]}])
    with raises_at(path, 1, "3 tokens but 2 tags", "one tag per token"):
        load(path, task="token_classification")


def test_empty_text_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "  ", "label": 0}])
    with raises_at(path, 2, "'text' is empty"):
        load(path)


def test_missing_file_and_unknown_extension_and_bad_gzip(tmp_path):
    with raises_at(tmp_path / "nope.jsonl", None, "no such file", "Check the path"):
        load(tmp_path / "nope.jsonl")
    odd = tmp_path / "d.txt"
    odd.write_text("text,label\na,0\n")
    with raises_at(odd, None, "extension '.txt'", "format: jsonl|csv|tsv"):
        load(odd)
    fake_gz = tmp_path / "d.jsonl.gz"
    fake_gz.write_text('{"text": "a", "label": 0}\n')
    with raises_at(fake_gz, None, "not a valid gzip file"):
        load(fake_gz)


# --- 3. DatasetSpec -------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"name": "sst2", "path": "x.jsonl"}, {"name": "sst2", "hub": "a/b"}])
def test_spec_needs_exactly_one_source(kwargs):
    with pytest.raises(ValueError, match="set exactly one of 'name'"):
        DatasetSpec(task="classification", **kwargs)


@pytest.mark.parametrize("kwargs", [{"path": "x.jsonl"}, {"hub": "a/b"}])
def test_spec_needs_task_for_files_and_hub(kwargs):
    with pytest.raises(ValueError, match="needs 'task'"):
        DatasetSpec(**kwargs)
    assert DatasetSpec(task="classification", **kwargs).task == "classification"
    assert DatasetSpec(name="sst2").task is None  # catalog entries know their task


def test_spec_rejects_a_non_positive_limit():
    with pytest.raises(ValueError, match="'limit' must be a positive"):
        DatasetSpec(name="sst2", limit=0)


def test_spec_parse():
    spec = DatasetSpec.parse("sst2:dev")
    assert (spec.name, spec.split, spec.path, spec.hub) == ("sst2", "dev", None, None)
    assert DatasetSpec.parse("sst2").split == "train"
    glue = DatasetSpec.parse("hub:glue@sst2:validation", task="classification")
    assert (glue.hub, glue.config, glue.split, glue.name) == ("glue", "sst2", "validation", None)
    imdb = DatasetSpec.parse("hub:stanfordnlp/imdb:test", task="classification", limit=5)
    assert (imdb.hub, imdb.config, imdb.split, imdb.limit) == ("stanfordnlp/imdb", None, "test", 5)
    assert DatasetSpec.parse("hub:org/x", task="classification").split == "train"
    local = DatasetSpec.parse("data/my.jsonl", task="classification", columns={"text": "s"})
    assert (local.path, local.name, local.columns) == ("data/my.jsonl", None, {"text": "s"})
    with pytest.raises(ValueError, match="needs 'task'"):
        DatasetSpec.parse("hub:glue@sst2")


# --- 4. catalog -----------------------------------------------------------------------------------


def test_catalog_sst2_dev(shared_data):
    data = load_split(DatasetSpec(name="sst2", split="dev"), data_dir=shared_data)
    assert len(data) == 872 and data.labels == ["negative", "positive"]
    assert data.examples[0] == {"text": "it 's a charming and often affecting journey .", "label": 1}
    assert {e["label"] for e in data.examples} == {0, 1}
    assert data.source == str(shared_data / "sst2" / "dev.jsonl")


def test_catalog_conll2003_validation_alias(shared_data):
    data = load_split(DatasetSpec(name="conll2003", split="validation"), data_dir=shared_data)
    assert data.task == "token_classification" and len(data) == 3250
    assert data.labels == list(CATALOG["conll2003"].labels)
    assert data.examples[0]["tokens"][:3] == ["CRICKET", "-", "LEICESTERSHIRE"]
    assert data.examples[0]["tags"][:3] == [0, 0, data.labels.index("B-ORG")]
    for ex in data.examples:
        assert len(ex["tags"]) == len(ex["tokens"])
        assert all(type(t) is int and 0 <= t < len(data.labels) for t in ex["tags"])


def test_catalog_conll2003_chunk_tags_infer_their_own_labels(shared_data):
    spec = DatasetSpec(name="conll2003", split="dev", columns={"tags": "chunk_tags"}, limit=50)
    data = load_split(spec, data_dir=shared_data)
    assert data.labels[0] == "O" and "B-NP" in data.labels and "B-PER" not in data.labels
    first = [data.labels[t] for t in data.examples[0]["tags"]]
    assert first == ["B-NP", "O", "B-NP", "I-NP", "B-PP", "B-NP", "I-NP", "I-NP", "I-NP", "I-NP", "O"]


def test_catalog_rte_gives_text_pairs(shared_data):
    data = load_split(DatasetSpec(name="rte", split="dev"), data_dir=shared_data)
    assert len(data) == 277 and data.task == "pair_classification"
    assert data.labels == ["entailment", "not_entailment"]
    first = data.examples[0]
    assert set(first) == {"text", "text_pair", "label"}
    assert (
        first["text"].startswith("Dana Reeve") and first["text_pair"] == "Christopher Reeve had an accident."
    )
    assert first["label"] == 1


def test_catalog_unknown_name_and_split_suggest(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data set 'sst3'\. Did you mean 'sst2'\?"):
        load_split(DatasetSpec(name="sst3"), data_dir=tmp_path)
    with pytest.raises(
        ValueError, match=r"sst2 has no split 'tset'\. Did you mean 'test'\?.*Splits: dev, test, train"
    ):
        load_split(DatasetSpec(name="sst2", split="tset"), data_dir=tmp_path)


def _offline(calls: list):
    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach the hub\nsecond line")

    return fake


def test_catalog_split_missing_locally_falls_back_to_the_hub_and_explains_offline(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", _offline(calls))
    with pytest.raises(ValueError) as err:
        load_split(DatasetSpec(name="sst2", split="validation"), data_dir=tmp_path)
    message = str(err.value)
    assert message.startswith("sst2:dev: not found locally")
    assert (
        f"data dir: {tmp_path}" in message and "$SUMMON_DATA_DIR" in message and "sst2/dev.jsonl" in message
    )
    assert "ConnectionError: Couldn't reach the hub." in message and "Offline?" in message
    assert calls == [(("nyu-mll/glue", "sst2"), {"split": "validation"})]


def test_catalog_split_only_on_the_hub_with_shared_data(monkeypatch, shared_data):
    datasets = pytest.importorskip("datasets")
    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", _offline(calls))
    with pytest.raises(
        ValueError, match=rf"^qnli:train: not found locally \(data dir: {re.escape(str(shared_data))}"
    ):
        load_split(DatasetSpec(name="qnli", split="train"), data_dir=shared_data)
    assert calls == [(("nyu-mll/glue", "qnli"), {"split": "train"})]


def _fake_hub(monkeypatch, data: dict, features: dict) -> list:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(data, features=datasets.Features(features))
    calls: list = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return ds

    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


def test_hub_dataset_end_to_end_uses_class_label_names(monkeypatch):
    import datasets

    calls = _fake_hub(
        monkeypatch,
        {"sentence": ["good", "bad", "meh"], "label": [1, 0, 2], "idx": [0, 1, 2]},
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["neg", "pos", "mid"]),
            "idx": datasets.Value("int32"),
        },
    )
    spec = DatasetSpec.parse(
        "hub:someone/reviews@en:test", task="classification", columns={"text": "sentence"}
    )
    data = load_split(spec)
    assert calls == [(("someone/reviews", "en"), {"split": "test"})]
    assert data.labels == ["neg", "pos", "mid"]
    assert data.examples == [
        {"text": "good", "label": 1},
        {"text": "bad", "label": 0},
        {"text": "meh", "label": 2},
    ]
    assert data.source == "hub:someone/reviews@en:test"


def test_catalog_hub_fallback_canonicalises_rows(monkeypatch, tmp_path):
    import datasets

    calls = _fake_hub(
        monkeypatch,
        {"sentence": ["nice", "dull"], "label": [1, 0], "idx": [0, 1]},
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
            "idx": datasets.Value("int32"),
        },
    )
    data = load_split(DatasetSpec(name="sst2", split="dev"), data_dir=tmp_path)
    assert calls == [(("nyu-mll/glue", "sst2"), {"split": "validation"})]
    assert data.source == "hub:nyu-mll/glue:validation"
    assert data.labels == ["negative", "positive"]
    assert data.examples == [{"text": "nice", "label": 1}, {"text": "dull", "label": 0}]


def test_hub_label_names_come_from_the_label_column(monkeypatch):
    import datasets

    tags = datasets.Sequence
    _fake_hub(
        monkeypatch,
        {"tokens": [["John", "runs"]], "pos_tags": [[0, 1]], "ner_tags": [[1, 0]]},
        {
            "tokens": tags(datasets.Value("string")),
            "pos_tags": tags(datasets.ClassLabel(names=["NNP", "VBZ", "DT"])),
            "ner_tags": tags(datasets.ClassLabel(names=["O", "B-PER"])),
        },
    )
    data = load_split(DatasetSpec(hub="x/ner", task="token_classification", columns={"tags": "ner_tags"}))
    assert data.labels == ["O", "B-PER"]
    assert data.examples == [{"tokens": ["John", "runs"], "tags": [1, 0]}]


# --- 5. featurizers -------------------------------------------------------------------------------


def _ids(tokenizer, *tokens: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(list(tokens))


def test_tokenizer_featurizer_classification(tokenizer):
    feats = TokenizerFeaturizer(tokenizer).encode(
        [{"text": "Good movie", "label": 1}, {"text": "bad"}], "classification"
    )
    assert feats[0]["input_ids"] == _ids(tokenizer, "[CLS]", "good", "movie", "[SEP]")
    assert feats[0]["attention_mask"] == [1, 1, 1, 1] and feats[0]["label"] == 1
    assert "label" not in feats[1] and feats[1]["input_ids"] == _ids(tokenizer, "[CLS]", "bad", "[SEP]")


@pytest.fixture
def segment_tokenizer():
    """The tiny tokenizer asked to return token_type_ids (a BERT hub tokenizer does by default)."""
    from summon.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return tok


def test_tokenizer_featurizer_pairs_pass_segment_ids_through(segment_tokenizer):
    ex = {"text": "good movie", "text_pair": "bad film", "label": 0}
    (feat,) = TokenizerFeaturizer(segment_tokenizer).encode([ex], "pair_classification")
    assert feat["input_ids"] == _ids(
        segment_tokenizer, "[CLS]", "good", "movie", "[SEP]", "bad", "film", "[SEP]"
    )
    assert feat["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1] and feat["label"] == 0


def test_tiny_tokenizer_pairs_produce_token_type_ids(tokenizer):
    ex = {"text": "good movie", "text_pair": "bad film", "label": 0}
    (feat,) = TokenizerFeaturizer(tokenizer).encode([ex], "pair_classification")
    assert feat["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]


WORDS = {
    "tokens": ["good", "xylophone", "movie"],
    "tags": [1, 2, 3],
}  # 'xylophone' -> x ##y ##l ... (9 pieces)


def test_tokenizer_featurizer_tags_first_subtoken(tokenizer):
    (feat,) = TokenizerFeaturizer(tokenizer).encode([WORDS], "token_classification")
    pieces = tokenizer.convert_ids_to_tokens(feat["input_ids"])
    assert pieces == [
        "[CLS]",
        "good",
        "x",
        "##y",
        "##l",
        "##o",
        "##p",
        "##h",
        "##o",
        "##n",
        "##e",
        "movie",
        "[SEP]",
    ]
    assert feat["word_starts"] == [1, 2, 11] and feat["num_words"] == 3 and feat["word_tags"] == [1, 2, 3]
    assert feat["labels"] == [IGNORE_INDEX, 1, 2] + [IGNORE_INDEX] * 8 + [3, IGNORE_INDEX]


def test_tokenizer_featurizer_x_label_on_continuations(tokenizer):
    (feat,) = TokenizerFeaturizer(tokenizer, subtoken_label="x", x_label_id=9).encode(
        [WORDS], "token_classification"
    )
    assert feat["labels"] == [IGNORE_INDEX, 1, 2] + [9] * 8 + [3, IGNORE_INDEX]
    with pytest.raises(ValueError, match="subtoken_label must be 'first' or 'x'"):
        TokenizerFeaturizer(tokenizer, subtoken_label="last")


def test_tokenizer_featurizer_truncation_drops_trailing_words(tokenizer, caplog):
    (feat,) = TokenizerFeaturizer(tokenizer, max_length=6).encode([WORDS], "token_classification")
    assert len(feat["input_ids"]) == 6
    assert feat["word_starts"] == [1, 2] and feat["word_tags"] == [1, 2] and feat["num_words"] == 3
    assert feat["labels"] == [IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    assert "dropped 1 words" in caplog.text


def test_unlabelled_words_have_no_labels(tokenizer):
    (feat,) = TokenizerFeaturizer(tokenizer).encode([{"tokens": ["good", "movie"]}], "token_classification")
    assert "labels" not in feat and "word_tags" not in feat and feat["word_starts"] == [1, 2]


def test_slow_tokenizer_is_rejected():
    class SlowTokenizer:
        is_fast = False
        pad_token_id = 0

    with pytest.raises(ValueError, match=r"SlowTokenizer is a slow tokenizer.*use_fast=True"):
        TokenizerFeaturizer(SlowTokenizer())
    with pytest.raises(ValueError, match="slow tokenizer"):
        TokenizerFeaturizer(SimpleNamespace(pad_token_id=0))  # no is_fast at all


def test_ngram_ids_are_in_range_and_stable():
    text = "The market fell , and the bank's stock price rose again today !"
    for buckets in (1, 7, 1000):
        ids = NgramFeaturizer(num_buckets=buckets).ids(text)
        assert ids and all(1 <= i <= buckets for i in ids)
    assert NgramFeaturizer(num_buckets=1).ids(text) == [1] * len(NgramFeaturizer().ngrams(text))
    # 1 + zlib.crc32(gram) % 1000 for 'good', 'movie', 'good movie': fixed across processes (no salted hash)
    assert NgramFeaturizer(num_buckets=1000).ids("Good MOVIE") == [195, 712, 504]
    assert NgramFeaturizer(num_buckets=1000).ids("good movie") == NgramFeaturizer(num_buckets=1000).ids(
        "good movie"
    )


def test_ngram_bigrams_and_limits():
    one, two = NgramFeaturizer(num_buckets=1000, ngram_max=1), NgramFeaturizer(num_buckets=1000, ngram_max=2)
    assert one.ids("good movie") == [195, 712]
    assert two.ids("good movie") == [195, 712, 504]
    assert two.ngrams("Good movie!") == ["good", "movie", "!", "good movie", "movie !"]
    assert NgramFeaturizer(max_ngrams=2).ids("a b c d") == NgramFeaturizer().ids("a b c d")[:2]
    with pytest.raises(ValueError, match="must be positive"):
        NgramFeaturizer(num_buckets=0)


def test_ngram_pair_text_hashes_apart_from_the_first_text():
    f = NgramFeaturizer(num_buckets=1000, ngram_max=1)
    assert f.ids("good", "movie") == [195, 493]  # '\x01movie', not 'movie' (712)
    assert f.ids("good", "movie") != f.ids("good movie")
    (feat,) = f.encode([{"text": "good", "text_pair": "movie", "label": 1}], "pair_classification")
    assert feat == {"input_ids": [195, 493], "label": 1}
    assert f.encode([{"text": "good"}], "classification") == [{"input_ids": [195]}]


def test_ngram_rejects_token_classification():
    with pytest.raises(ValueError, match="use a transformer for tagging"):
        NgramFeaturizer().encode([WORDS], "token_classification")


# --- 6. collate -----------------------------------------------------------------------------------


def test_collate_pads_to_the_longest_row_with_the_pad_id(tokenizer):
    feats = TokenizerFeaturizer(tokenizer, max_length=64).encode(
        [{"text": "good", "label": 0}, {"text": "a very good movie", "label": 1}], "classification"
    )
    batch = collate(feats, pad_id=7)
    assert batch["input_ids"].shape == (2, 6)  # longest row, not max_length
    assert batch["input_ids"][0].tolist() == [*feats[0]["input_ids"], 7, 7, 7]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert batch["label"].tolist() == [0, 1] and batch["label"].dtype == torch.long


def test_collate_word_level_batch(tokenizer):
    examples = [WORDS, {"tokens": ["bad"], "tags": [4]}]
    feats = TokenizerFeaturizer(tokenizer).encode(examples, "token_classification")
    feats[0]["teacher_logits"] = [[1.0, 0.0]] * 3
    feats[1]["teacher_logits"] = [[0.5, 0.5]]
    dataset = FeatureDataset(feats)
    batch = collate([dataset[i] for i in range(len(dataset))], pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 13)
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 4] + [IGNORE_INDEX] * 11
    assert batch["word_starts"].tolist() == [[1, 2, 11], [1, 0, 0]]
    assert batch["word_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["word_tags"].tolist() == [[1, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["num_words"].tolist() == [3, 1] and batch["example_index"].tolist() == [0, 1]
    assert batch["teacher_logits"].shape == (2, 3, 2)
    assert batch["teacher_logits"][1].tolist() == [[0.5, 0.5], [0.0, 0.0], [0.0, 0.0]]


def test_collate_stacks_sentence_teacher_logits():
    feats = [
        {"input_ids": [5, 6, 7], "label": 1, "teacher_logits": [0.1, 0.9]},
        {"input_ids": [5], "label": 0, "teacher_logits": torch.tensor([0.8, 0.2])},
    ]
    batch = collate(feats)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["teacher_logits"].shape == (2, 2) and batch["teacher_logits"].dtype == torch.float32
    assert torch.allclose(batch["teacher_logits"], torch.tensor([[0.1, 0.9], [0.8, 0.2]]))
    assert "attention_mask" not in batch and "labels" not in batch


# --- 7. fingerprint -------------------------------------------------------------------------------


def test_fingerprint_tracks_the_data(tmp_path):
    def make(label: int, labels=("neg", "pos")) -> TaskData:
        return TaskData(
            "classification", list(labels), [{"text": "a", "label": 0}, {"label": label, "text": "b"}], "x"
        )

    assert make(1).fingerprint() == make(1).fingerprint()
    assert make(1).fingerprint() != make(0).fingerprint()
    assert make(1).fingerprint() != make(1, labels=("pos", "neg")).fingerprint()
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "neg"}, {"text": "b", "label": "pos"}])
    (tmp_path / "d.csv").write_text("label,text\nneg,a\npos,b\n")
    assert load(path).fingerprint() == load(tmp_path / "d.csv").fingerprint() == make(1).fingerprint()


# --- label values and label sets (reliability: no silent wrong class set) --------------------------------------


def _classification(path: Path, **spec: Any):
    return load_split(DatasetSpec(path=str(path), task="classification", **spec))


def test_integer_and_string_labels_with_spaces_are_one_class(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "1"}, {"text": "c", "label": " 0 "}, {"text": "d", "label": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = _classification(path)
    assert data.labels == ["0", "1"] and [ex["label"] for ex in data.examples] == [1, 1, 0, 0]
    named = tmp_path / "named.jsonl"
    named.write_text(json.dumps({"text": "a", "label": "pos "}) + "\n" + json.dumps({"text": "b", "label": "neg"}) + "\n")
    assert _classification(named).labels == ["neg", "pos"]


def test_unused_integer_classes_and_a_single_class_are_warned_about(tmp_path, caplog):
    typo = tmp_path / "typo.jsonl"
    typo.write_text("".join(json.dumps({"text": str(i), "label": v}) + "\n" for i, v in enumerate([0, 1, 0, 7])))
    with caplog.at_level("WARNING", logger="summon.data.loading"):
        assert len(_classification(typo).labels) == 8
    assert "no row has 2, 3, 4, 5, 6" in caplog.text and "mistyped" in caplog.text
    caplog.clear()
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "a", "label": "pos"}) + "\n")
    with caplog.at_level("WARNING", logger="summon.data.loading"):
        _classification(one)
    assert "at least two classes" in caplog.text


def test_a_repeated_header_row_and_duplicate_label_names_are_refused(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("text,label\ngood film,1\ntext,label\nbad film,0\n")
    with pytest.raises(ValueError, match=r"twice\.csv:3: this row repeats the header"):
        _classification(path)
    with pytest.raises(ValueError, match="'labels' names pos more than once"):
        DatasetSpec(path="x.jsonl", task="classification", labels=["pos", "neg", "pos "])


def test_data_with_other_label_names_than_the_model_is_refused_naming_both(tmp_path):
    bbc = ["business", "entertainment", "politics", "sport", "tech"]
    with pytest.raises(ValueError, match=r"the data's labels are \[World, Sports, Business, Sci/Tech\] but "
                                         r"\[business, entertainment, politics, sport, tech\] are expected"):
        load_split(DatasetSpec(name="ag_news", split="test", labels=bbc), data_dir=FIXTURE_DATA)


def test_data_whose_labels_the_model_has_in_another_order_is_renumbered_by_name():
    plain = load_split(DatasetSpec(name="sst2", split="dev"), data_dir=FIXTURE_DATA)
    flipped = load_split(DatasetSpec(name="sst2", split="dev", labels=["positive", "negative"]), data_dir=FIXTURE_DATA)
    assert flipped.labels == ["positive", "negative"]
    assert [1 - ex["label"] for ex in plain.examples] == [ex["label"] for ex in flipped.examples]


def test_a_huge_text_is_cut_before_tokenisation_without_changing_its_features(caplog, monkeypatch):
    monkeypatch.setattr(features_module, "_WARNED_LONG", False)
    featurizer = TokenizerFeaturizer(tiny_tokenizer(), max_length=16)
    text = "the movie was great fun and " * 20_000  # 560,000 characters
    with caplog.at_level("WARNING", logger="summon.data.features"):
        cut = featurizer.encode([{"text": text}, {"text": text}], "classification")
    assert caplog.text.count("was cut to") == 1  # warned once
    featurizer.encode([{"text": text}], "classification")
    assert caplog.text.count("was cut to") == 1  # ... per process, not per call or featurizer
    assert len(text) > 16 * CHARS_PER_TOKEN
    whole = featurizer.tokenizer(text, truncation=True, max_length=16)["input_ids"]
    assert cut[0]["input_ids"] == whole and cut[1]["input_ids"] == whole

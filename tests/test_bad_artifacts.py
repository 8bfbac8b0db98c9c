"""Bad saved artifacts (issue 11, item 3): a saved predictor or cascade is whole or refused.

One test per case. Each damages a copy of a tiny saved predictor (a bag of n-grams, a one-layer random
tiny-bert) or cascade and asserts the exact outcome: a ``ValueError`` naming the file and the key, or that it
loads and predicts what the original predicts.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import summon
from summon.adaptive.cascade import CascadePredictor, build_cascade
from summon.models import ModelConfig, build_model
from summon.predictors.predictor import MANIFEST, WEIGHTS, Predictor, load_predictor

LABELS = ["neg", "pos"]
TEXTS = ["a good film", "bad plot , dull acting", "fine", "great fun"]
NGRAM = {"kind": "ngram", "num_buckets": 256, "embed_dim": 8}
BERT = {"kind": "random", "name": "tiny-bert", "num_layers": 1, "max_length": 32}


def _save(directory: Path, *, seed: int = 0, labels: list[str] = LABELS, **cfg) -> Path:
    built = build_model(ModelConfig(init_seed=seed, **cfg), "classification", len(labels))
    predictor = Predictor(built.model, built.featurizer, "classification", labels,
                          {"architecture": built.architecture})
    return predictor.save(directory, architecture=built.architecture)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Saved once: ``ngram``, ``bert`` and the cascade ``cascade`` of the two (stages by relative path)."""
    base = tmp_path_factory.mktemp("artifacts")
    _save(base / "ngram", seed=1, **NGRAM)
    _save(base / "bert", seed=2, **BERT)
    build_cascade([str(base / "ngram"), str(base / "bert")]).save(base / "cascade")
    return base


@pytest.fixture
def copy(root, tmp_path) -> Path:
    """A fresh copy of everything in ``root`` (relative stage paths keep working)."""
    return Path(shutil.copytree(root, tmp_path / "copy"))


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


def _write(path: Path, manifest: dict) -> None:
    (path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def _edit(path: Path, **changes) -> None:
    """Set (or, with ``None``, drop) manifest keys."""
    manifest = _manifest(path)
    for key, value in changes.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    _write(path, manifest)


def _refused(path: Path, *pieces: str) -> str:
    """The ValueError message of loading ``path``; it must contain every piece (file paths, keys)."""
    with pytest.raises(ValueError) as err:
        summon.load(path, device="cpu")
    message = str(err.value)
    for piece in pieces:
        assert piece in message, f"{piece!r} not in {message!r}"
    return message


def _probs(predictor) -> np.ndarray:
    return np.array([p.probs for p in predictor.predict(TEXTS)])


# --- files: every file is listed and checked ---------------------------------------------------------------


def test_every_saved_file_is_listed_with_its_size_and_hash(root):
    files = _manifest(root / "bert")["files"]
    assert sorted(files) == [WEIGHTS, "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]
    on_disk = root / "bert" / "tokenizer" / "tokenizer.json"
    assert files["tokenizer/tokenizer.json"]["bytes"] == on_disk.stat().st_size
    assert re.fullmatch(r"[0-9a-f]{64}", files["tokenizer/tokenizer.json"]["sha256"])


def test_deleted_tokenizer_json_is_refused(copy):
    (copy / "bert" / "tokenizer" / "tokenizer.json").unlink()
    _refused(copy / "bert", f"{copy / 'bert' / 'tokenizer' / 'tokenizer.json'}: missing")


def test_deleted_tokenizer_config_is_refused(copy):
    (copy / "bert" / "tokenizer" / "tokenizer_config.json").unlink()
    _refused(copy / "bert", f"{copy / 'bert' / 'tokenizer' / 'tokenizer_config.json'}: missing")


def test_deleted_tokenizer_folder_is_refused(copy):
    shutil.rmtree(copy / "bert" / "tokenizer")
    _refused(copy / "bert", f"{copy / 'bert' / 'tokenizer'}: missing tokenizer folder", "lists 2 files")


def test_edited_tokenizer_vocabulary_is_refused(copy):
    path = copy / "bert" / "tokenizer" / "tokenizer.json"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('"[UNK]"', '"[UNX]"', 1), encoding="utf-8")  # same size, other contents
    _refused(copy / "bert", f"{path}: contents do not match the manifest's sha256")


def test_truncated_weights_are_refused(copy):
    weights = copy / "ngram" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    _refused(copy / "ngram", f"{weights}: 100 bytes but the manifest says")


def test_weights_swapped_from_another_model_are_refused(copy, tmp_path):
    other = _save(tmp_path / "other", seed=9, **NGRAM)
    shutil.copyfile(other / WEIGHTS, copy / "ngram" / WEIGHTS)
    _refused(copy / "ngram", f"{copy / 'ngram' / WEIGHTS}: contents do not match", "another predictor")


def test_an_unlisted_extra_file_is_ignored(root, copy):
    (copy / "bert" / "tokenizer" / "notes.txt").write_text("mine", encoding="utf-8")
    np.testing.assert_allclose(_probs(summon.load(copy / "bert", device="cpu")),
                               _probs(load_predictor(root / "bert")), atol=1e-6)


def test_an_old_manifest_listing_only_the_weights_still_loads(root, copy):
    manifest = _manifest(copy / "bert")
    manifest["files"] = {WEIGHTS: manifest["files"][WEIGHTS]}  # as saved before every file was listed
    _write(copy / "bert", manifest)
    np.testing.assert_allclose(_probs(summon.load(copy / "bert", device="cpu")),
                               _probs(load_predictor(root / "bert")), atol=1e-6)


def test_a_listed_path_outside_the_folder_is_refused(copy):
    manifest = _manifest(copy / "ngram")
    manifest["files"]["../bert/model.safetensors"] = manifest["files"][WEIGHTS]
    _write(copy / "ngram", manifest)
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}:", "'files' names '../bert/model.safetensors'")


# --- the manifest schema -----------------------------------------------------------------------------------


def test_manifest_that_is_not_json_is_refused(copy):
    (copy / "ngram" / MANIFEST).write_text('{"format": "summon-predictor", ', encoding="utf-8")
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}: unreadable manifest")


def test_manifest_without_labels_is_refused(copy):
    _edit(copy / "ngram", labels=None)
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}: 'labels' is missing")


def test_manifest_without_task_is_refused(copy):
    _edit(copy / "ngram", task=None)
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}: 'task' must be one of classification, "
                             "pair_classification, token_classification, missing")


def test_manifest_with_an_unknown_task_is_refused(copy):
    _edit(copy / "ngram", task="regression")
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}: 'task' must be one of", "got 'regression'")


def test_manifest_without_architecture_is_refused(copy):
    _edit(copy / "ngram", architecture=None)
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}: 'architecture' is missing")


def test_format_version_as_a_string_is_refused(copy):
    _edit(copy / "ngram", format_version="1")
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}: 'format_version' must be a positive integer, "
                             "got '1' (str)")


def test_format_version_from_the_future_is_refused(copy):
    _edit(copy / "ngram", format_version=99)
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}: format version 99 is newer", "upgrade summon")


def test_duplicate_labels_are_refused(copy):
    _edit(copy / "ngram", labels=["pos", "pos"])
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}: 'labels' must be distinct, but ['pos'] appear")


def test_labels_given_as_a_string_are_refused(copy):
    _edit(copy / "ngram", labels="neg,pos")
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}: 'labels' must be a non-empty list")


def test_more_labels_than_model_outputs_are_refused(copy):
    _edit(copy / "bert", labels=["neg", "pos", "mixed"])
    _refused(copy / "bert", f"{copy / 'bert' / MANIFEST}: 'labels' names 3 classes but the model in {WEIGHTS} "
                            "has 2 class outputs")


def test_fewer_labels_than_model_outputs_are_refused(copy):
    _edit(copy / "ngram", labels=["neg"])
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}: 'labels' names 1 classes but the model", "has 2")


def test_a_defer_output_is_not_counted_as_a_label(tmp_path):
    path = _save(tmp_path / "defer", seed=3, defer_output=True, **NGRAM)
    loaded = summon.load(path, device="cpu")
    assert loaded.labels == LABELS and _probs(loaded).shape == (len(TEXTS), 2)


def test_unknown_architecture_type_is_refused(copy):
    manifest = _manifest(copy / "ngram")
    manifest["architecture"]["type"] = "lstm"
    _write(copy / "ngram", manifest)
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}: 'architecture.type' must be one of", "got 'lstm'")


def test_architecture_missing_a_key_its_type_needs_is_refused(copy):
    manifest = _manifest(copy / "ngram")
    del manifest["architecture"]["num_buckets"]
    _write(copy / "ngram", manifest)
    _refused(copy / "ngram", f"{copy / 'ngram' / MANIFEST}: 'architecture.num_buckets' is missing")


def test_unknown_featurizer_kind_is_refused(copy):
    _edit(copy / "bert", featurizer={"kind": "sentencepiece", "max_length": 32})
    _refused(copy / "bert", f"{copy / 'bert' / MANIFEST}: 'featurizer.kind' must be one of ngram, tokenizer",
             "got 'sentencepiece'")


def test_every_schema_problem_is_reported_together(copy):
    _edit(copy / "ngram", task=None, labels=None, format_version="1")
    message = _refused(copy / "ngram", "'format_version'", "'task'", "'labels'")
    assert message.count(str(copy / "ngram" / MANIFEST)) == 1


# --- cascades: stages fingerprinted, loops refused ---------------------------------------------------------


def test_a_cascade_records_each_local_stage_fingerprint(root):
    stages = _manifest(root / "cascade")["stages"]
    assert [s["fingerprint"] for s in stages] == [_manifest(root / name)["files"][WEIGHTS]["sha256"]
                                                  for name in ("ngram", "bert")]


def test_a_cascade_whose_stage_was_replaced_is_refused(copy):
    _save(copy / "ngram", seed=7, **NGRAM)  # a retrained stage saved over the old one: whole, but another model
    message = _refused(copy / "cascade", f"{copy / 'cascade' / MANIFEST}: stage 0 ('stage0'",
                       "is not the model this cascade was saved with")
    assert "Rebuild the cascade" in message and "recalibrate" in message


def test_a_cascade_stage_pointing_at_the_cascade_itself_is_refused(copy):
    manifest = _manifest(copy / "cascade")
    manifest["stages"][0]["path"] = "."
    _write(copy / "cascade", manifest)
    _refused(copy / "cascade", f"{copy / 'cascade' / MANIFEST}: stage 0 ('stage0') points to the cascade's own folder")


def test_a_cascade_stage_pointing_at_another_cascade_is_refused(copy):
    shutil.copytree(copy / "cascade", copy / "inner")
    manifest = _manifest(copy / "cascade")
    manifest["stages"][1]["path"] = "../inner"
    _write(copy / "cascade", manifest)
    _refused(copy / "cascade", f"{copy / 'cascade' / MANIFEST}: stage 1 ('stage1')",
             "is a 'summon-cascade', not a plain predictor")


def test_a_cascade_saved_before_fingerprints_still_loads(root, copy):
    manifest = _manifest(copy / "cascade")
    for stage in manifest["stages"]:
        del stage["fingerprint"]
    _write(copy / "cascade", manifest)
    loaded = summon.load(copy / "cascade", device="cpu")
    assert isinstance(loaded, CascadePredictor) and loaded.num_stages == 2
    np.testing.assert_allclose(loaded.run_full([{"text": t} for t in TEXTS]),
                               np.stack(load_predictor(root / "bert").logits([{"text": t} for t in TEXTS])),
                               atol=1e-6)


def test_saving_a_cascade_into_a_stage_folder_is_refused(copy):
    cascade = summon.load(copy / "cascade", device="cpu")
    with pytest.raises(ValueError, match=re.escape(f"{copy / 'ngram'} is the folder of stage 'stage0'")):
        cascade.save(copy / "ngram")
    assert _manifest(copy / "ngram")["format"] == "summon-predictor"  # the stage is untouched

"""Bad-input suite, data class: every bad data file or data name ends in one clear outcome (issue 11, items 1 and 7).

Each test is one case and asserts the exact outcome: the error class and the file, line, column or name the
message gives, or the correct answer (the label set and ids) where the input is acceptable.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub.constants as hub_constants
import pytest
from toy import FIXTURE_DATA

from summon.data import DatasetSpec, TaskData, load_split
from summon.data import catalog as catalog_module
from summon.data.catalog import OFFLINE_ENV, PROXY_ENV, hub_offline

# --- helpers --------------------------------------------------------------------------------------


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def load(path: Path, **kw: Any) -> TaskData:
    return load_split(DatasetSpec(path=str(path), task="classification", **kw))


def raises_at(path: Path, line: int | None, *hints: str):
    """``pytest.raises(ValueError)`` whose message starts ``PATH:LINE:`` (or ``PATH:``) and holds every hint."""
    head = re.escape(f"{path}:{line}:" if line is not None else f"{path}:")
    return pytest.raises(ValueError, match="^" + head + "".join(f"(?=.*{re.escape(h)})" for h in hints))


@pytest.fixture
def offline(monkeypatch) -> None:
    """The hub switched off the documented way (``HF_HUB_OFFLINE=1``)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --- labels (item 1) ------------------------------------------------------------------------------


def test_labels_1_and_text_1_and_padded_1_are_one_class(tmp_path):
    data = load(jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "1"},
                                             {"text": "c", "label": " 1 "}, {"text": "d", "label": 0}]))
    assert data.labels == ["0", "1"]
    assert [ex["label"] for ex in data.examples] == [1, 1, 1, 0]


def test_label_1_point_0_is_class_1(tmp_path):
    data = load(jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 1.0}, {"text": "b", "label": 0}]))
    assert data.labels == ["0", "1"] and [ex["label"] for ex in data.examples] == [1, 0]


def test_padded_class_names_in_a_csv_are_one_class(tmp_path):
    data = load(write(tmp_path / "d.csv", "text,label\na,pos\nb, pos \nc,neg\n"))
    assert data.labels == ["neg", "pos"]
    assert [ex["label"] for ex in data.examples] == [1, 1, 0]


def test_a_row_repeating_the_header_is_refused_at_its_line(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\na,0\ntext,label\nb,1\n")
    with raises_at(path, 3, "repeats the header", "Delete the row"):
        load(path)


def test_a_single_class_is_warned_about(tmp_path, caplog):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}])
    with caplog.at_level(logging.WARNING, logger="summon.data.loading"):
        data = load(path)
    assert data.labels == ["pos"]
    assert f"{path}: every row has the label pos" in caplog.text


def test_an_integer_class_without_an_example_is_warned_about(tmp_path, caplog):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 2}])
    with caplog.at_level(logging.WARNING, logger="summon.data.loading"):
        data = load(path)
    assert data.labels == ["0", "1", "2"]
    assert "no row has 1; is a label mistyped?" in caplog.text


def test_a_declared_class_without_an_example_is_warned_about(tmp_path, caplog):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "neg"}, {"text": "b", "label": "pos"}])
    with caplog.at_level(logging.WARNING, logger="summon.data.loading"):
        data = load(path, labels=["neg", "pos", "neutral"])
    assert data.labels == ["neg", "pos", "neutral"] and [ex["label"] for ex in data.examples] == [0, 1]
    assert f"{path}: no row has the declared label(s) neutral" in caplog.text


def test_duplicate_label_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^'labels' names pos more than once"):
        DatasetSpec(path=str(tmp_path / "d.jsonl"), task="classification", labels=["neg", "pos", " pos"])


def test_a_typo_label_outside_the_declared_set_is_refused_at_its_line(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "neg"}, {"text": "b", "label": "pos"},
                                        {"text": "c", "label": "postive"}])
    with raises_at(path, 3, "label 'postive' is not in the label set (neg, pos"):
        load(path, labels=["neg", "pos"])


def test_class_ids_mixed_with_class_names_are_refused(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1},
                                        {"text": "c", "label": "pos"}])
    with raises_at(path, None, "mix class ids (0, 1) and class names (pos)"):
        load(path)


def test_a_null_label_is_refused_at_its_line(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": None}])
    with raises_at(path, 2, "label None is neither a class id"):
        load(path)


def test_data_whose_label_names_differ_from_the_expected_ones_is_refused():
    spec = DatasetSpec(name="sst2", split="dev", labels=["World", "Sports"])
    with pytest.raises(ValueError, match=r"the data's labels are \[negative, positive\] but \[World, Sports\] are "
                                         r"expected .*negative, positive has no place"):
        load_split(spec, data_dir=FIXTURE_DATA)


# --- readers (item 7) -----------------------------------------------------------------------------


def test_tsv_with_a_stray_quote_keeps_its_rows_apart(tmp_path):
    data = load(write(tmp_path / "d.tsv", 'text\tlabel\nhe said "no\tneg\nfine\tpos\nok\tpos\n'))
    assert [ex["text"] for ex in data.examples] == ['he said "no', "fine", "ok"]
    assert [ex["label"] for ex in data.examples] == [0, 1, 1]


def test_tsv_with_quoting_csv_reads_a_quoted_tab(tmp_path):
    data = load(write(tmp_path / "d.tsv", 'text\tlabel\n"a\tb"\tneg\nc\tpos\n'), quoting="csv")
    assert [ex["text"] for ex in data.examples] == ["a\tb", "c"]


def test_csv_quote_spanning_lines_names_both_lines(tmp_path):
    path = write(tmp_path / "d.csv", 'text,label\n"he said,0\nb,1\nc",0\nd,1\n')
    with raises_at(path, 2, "opens on line 2 and runs to line 4", "quoting: none"):
        load(path)


def test_csv_quote_never_closed_names_where_it_opened(tmp_path):
    path = write(tmp_path / "d.csv", 'text,label\na,0\n"b,1\nc,0\n')
    with raises_at(path, 3, "from line 3 to line 4"):
        load(path)


def test_quoting_on_a_jsonl_file_is_refused(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}])
    with raises_at(path, None, "'quoting' applies to CSV and TSV files"):
        load(path, quoting="none")


def test_a_folder_given_as_a_data_file_is_refused(tmp_path):
    folder = tmp_path / "train.jsonl"
    folder.mkdir()
    jsonl(folder / "part1.jsonl", [{"text": "a", "label": 0}])
    with raises_at(folder, None, "a folder, not a data file", "part1.jsonl"):
        load(folder)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever the mode")
def test_an_unreadable_file_is_refused(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}])
    path.chmod(0)
    try:
        with raises_at(path, None, "cannot read the file (Permission denied)"):
            load(path)
    finally:
        path.chmod(0o644)


def test_a_file_that_fails_to_read_is_refused(tmp_path, monkeypatch):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}])

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # what chmod 000 does for a user other than root
    with raises_at(path, None, "cannot read the file (Permission denied)"):
        load(path)


def test_a_missing_file_is_refused(tmp_path):
    path = tmp_path / "nope.jsonl"
    with raises_at(path, None, "no such file"):
        load(path)


def test_an_empty_file_is_refused(tmp_path):
    path = write(tmp_path / "d.jsonl", "\n  \n")
    with raises_at(path, None, "the file is empty"):
        load(path)


def test_a_header_only_csv_is_refused(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\n")
    with raises_at(path, None, "no data rows"):
        load(path)


def test_a_missing_column_names_the_column_and_the_file(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"txt": "b", "label": 1}])
    with raises_at(path, 2, "missing column 'text'", "The row has: txt, label"):
        load(path)


def test_a_csv_row_with_too_many_fields_names_its_line(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\na,0\nb, c,1\n")
    with raises_at(path, 3, "3 fields but the header has 2"):
        load(path)


def test_a_malformed_json_line_names_the_line(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1\n')
    with raises_at(path, 2, "malformed JSON"):
        load(path)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write(tmp_path / "d.jsonl", b'{"text": "a", "label": 0}\n{"text": "caf\xe9", "label": 1}\n')
    with raises_at(path, 2, "bytes that are not UTF-8", "iconv"):
        load(path)


def test_a_file_without_a_known_extension_is_refused(tmp_path):
    path = write(tmp_path / "d.txt", "text,label\na,0\n")
    with raises_at(path, None, "cannot tell the format from the extension '.txt'"):
        load(path)


# --- data names, offline (item 7) -----------------------------------------------------------------


def test_unknown_data_name_offline_lists_local_names(offline):
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        load_split(DatasetSpec(name="sst3", split="dev"), data_dir=FIXTURE_DATA)
    message = str(err.value)
    assert message.startswith("unknown data set 'sst3'. Did you mean 'sst2'?")
    assert f"Available here without the hub (data dir {FIXTURE_DATA}): sst2 (train, dev, test)" in message
    assert time.monotonic() - start < 2


def test_unknown_data_name_on_the_command_line_is_no_file(monkeypatch):
    monkeypatch.setenv("SUMMON_DATA_DIR", str(FIXTURE_DATA))
    with pytest.raises(ValueError, match=r"^unknown data set 'ag_nwes': no catalog data set and no file has that "
                                         r"name\. Did you mean 'ag_news'\?.*ag_news \(train, test\)"):
        DatasetSpec.parse("ag_nwes:test", require_split=True, task="classification")


def test_catalog_split_missing_locally_tries_only_the_cache_offline(offline, monkeypatch):
    seen = []

    def load_dataset(*args, **kwargs):
        seen.append((datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE))
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    before = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    with pytest.raises(ValueError) as err:
        load_split(DatasetSpec(name="qnli", split="train"), data_dir=FIXTURE_DATA)
    assert seen == [(True, True)]  # the libraries ran cache-only: no retries against an unreachable hub
    assert before == (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    message = str(err.value)
    assert message.startswith("qnli:train: not found locally")
    assert "The hub cannot be reached now (HF_HUB_OFFLINE=1)" in message and "qnli (dev)" in message


def test_no_network_is_found_in_seconds_without_an_offline_switch(monkeypatch):
    for name in (*OFFLINE_ENV, *PROXY_ENV):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"https://127.0.0.1:{sock.getsockname()[1]}")
        monkeypatch.setattr(catalog_module, "_unreachable", catalog_module._unreachable.__wrapped__)
        start = time.monotonic()
        reason = hub_offline()
    assert reason is not None and reason.startswith("no network: cannot reach 127.0.0.1")
    assert time.monotonic() - start < catalog_module.PROBE_SECONDS + 0.5

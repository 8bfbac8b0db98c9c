"""``summon export MODEL OUT``: write a plain summon model as a standard Hugging Face folder.

The command's logic is :func:`summon.predictors.st_export.export` (``--format auto``, the default: a
``transformers`` classifier folder where one holds the model, else a ``sentence-transformers`` one); this file holds only its argument parser (light, so
``summon --help`` imports no model code); :func:`summon.cli.commands.cmd_export` makes the call.
Errors (an n-gram student, an early-exit model, a head with no standard equivalent) are ``ValueError``
messages that say what can be exported and how to train it; the ``summon`` entry point prints them.
"""

from __future__ import annotations

import argparse
from typing import Any

FORMATS = ("auto", "hf", "sentence-transformers")  # summon.predictors.st_export.EXPORT_FORMATS (light here)


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` sub-command to ``subparsers`` (from ``parser.add_subparsers()``); returns its parser."""
    p = subparsers.add_parser(
        "export", help="write a trained model as a standard Hugging Face folder (transformers or sentence-transformers)",
        description="Write a plain (non-adaptive) summon model as a standard Hugging Face folder that gives the "
        "same logits. --format hf: AutoModelForSequenceClassification.from_pretrained(OUT) "
        "(AutoModelForTokenClassification for taggers), for transformer models whose sequence head pools with "
        "model.pooling: pooler (BERT, RoBERTa, XLM-R, MPNet), softmax taggers of every supported encoder, and "
        "models trained with model.kind: hf. --format sentence-transformers: SentenceTransformer(OUT).encode(texts) "
        "returns the logits (AutoModel.from_pretrained(OUT) loads the encoder), for sequence classifiers pooling "
        "with mean (every default recipe) or cls; needs the sentence-transformers package. --format auto (the "
        "default) picks the one that holds the model.")
    p.add_argument("model", metavar="MODEL", help="a saved summon predictor directory")
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="auto (default): hf where a transformers classifier holds the model, else sentence-transformers")
    p.add_argument("out", metavar="OUT", help="a new or empty folder to write (an existing one holding anything is refused)")
    p.set_defaults(run=("summon.cli.commands", "cmd_export"))
    return p

"""``summon export MODEL --format hf OUT``: write a plain summon model as a standard Hugging Face folder.

The command's logic is :func:`summon.predictors.huggingface.export_hf`; this file holds only its argument parser (light, so
``summon --help`` imports no model code); :func:`summon.cli.commands.cmd_export` makes the call.
Errors (an n-gram student, an early-exit model, a head with no standard equivalent) are ``ValueError``
messages that say what can be exported and how to train it; the ``summon`` entry point prints them.
"""

from __future__ import annotations

import argparse
from typing import Any

FORMATS = ("hf",)


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` sub-command to ``subparsers`` (from ``parser.add_subparsers()``); returns its parser."""
    p = subparsers.add_parser(
        "export", help="write a trained model in another format: --format hf (transformers' from_pretrained)",
        description="Write a plain (non-adaptive) summon model as a standard Hugging Face classifier folder: "
        "AutoModelForSequenceClassification.from_pretrained(OUT) (AutoModelForTokenClassification for taggers) "
        "gives the same logits. Exportable: transformer teachers and students whose sequence head pools with "
        "model.pooling: pooler (BERT, RoBERTa, XLM-R, MPNet), softmax taggers of every supported encoder, and "
        "models trained with model.kind: hf.")
    p.add_argument("model", metavar="MODEL", help="a saved summon predictor directory")
    p.add_argument("--format", choices=FORMATS, default="hf", help="hf: a Hugging Face model folder")
    p.add_argument("out", metavar="OUT", help="a new or empty folder to write (an existing one holding anything is refused)")
    p.set_defaults(run=("summon.cli.commands", "cmd_export"))
    return p

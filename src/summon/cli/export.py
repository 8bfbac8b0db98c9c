"""``summon export MODEL --format hf OUT``: write a plain summon model as a standard Hugging Face folder.

The command's logic is :func:`summon.hf.export_hf`; this file holds only its argument parser and the call.
Errors (an n-gram student, an early-exit model, a head with no standard equivalent) are ``ValueError``
messages that say what can be exported and how to train it; the ``summon`` entry point prints them.
"""

from __future__ import annotations

import argparse
from typing import Any

from summon.hf import export_hf, load_plain

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
    p.add_argument("out", metavar="OUT", help="the folder to write (created; its files are overwritten)")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``summon export``: load ``args.model`` on the CPU and write it to ``args.out``; returns 0.

    Raises:
        ValueError: If the model cannot be loaded or has no equivalent in ``args.format``.
    """
    if args.format != "hf":
        raise ValueError(f"--format {args.format!r}: unknown format; choose one of {', '.join(FORMATS)}")
    out = export_hf(load_plain(args.model, device="cpu"), args.out)
    print(f"wrote a Hugging Face model to {out}; load it with "
          f"transformers.AutoModelFor...Classification.from_pretrained('{out}')")
    return 0

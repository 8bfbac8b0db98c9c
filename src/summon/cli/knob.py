"""The knob flags, the same on ``summon predict``, ``eval`` and ``calibrate`` as the Python keywords
(argparse only: :func:`summon.cli.commands.knob_from_args` turns them into a :class:`~summon.adaptive.knob.Knob`):
``--budget B | --max-drop E | --threshold T | --guaranteed E [--delta D]``, and ``--unit flops|ms``."""

from __future__ import annotations

import argparse


def add_knob_arguments(parser: argparse.ArgumentParser, *, threshold: bool = True) -> None:
    """Add the mutually exclusive knob flags (``threshold`` is left out where it makes no sense: calibrate)."""
    group = parser.add_argument_group("operating point (at most one; default: the calibrated one)")
    knob = group.add_mutually_exclusive_group()
    knob.add_argument("--budget", type=float, metavar="B",
                      help="mean cost at most B, a fraction of the full model (0.4 = 40%%)")
    knob.add_argument("--max-drop", type=float, metavar="E",
                      help="cheapest point losing at most E against the full model (0.01 = 1 point)")
    if threshold:
        knob.add_argument("--threshold", type=float, metavar="T", help="this confidence threshold itself")
    knob.add_argument("--guaranteed", type=float, metavar="E",
                      help="cheapest point certified (Learn-then-Test) to lose at most E with probability 1 - delta")
    group.add_argument("--delta", type=float, default=None, metavar="D",
                       help="--guaranteed: failure probability (default 0.1)")
    group.add_argument("--unit", choices=["flops", "ms"], default=None,
                       help="cost unit of --budget (default: the calibration's)")

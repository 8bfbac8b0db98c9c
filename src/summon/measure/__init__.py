"""Measurement primitives below every adaptive layer: quality metrics (accuracy, F1, NLL, ECE), cost
(parameters, FLOPs counted by torch, latency timed with CUDA synchronisation), the machine and device, and
the scoring of logits against a split's labels. Nothing here knows about stages, predictors or reports.
"""

"""Adaptive inference: stages with costs, calibration, exit policies, threshold selection and a batched executor.

Early exit, cascades and progressive ensembles are one object seen three ways: ordered stages, each with
a cost and calibrated class scores, and a policy that stops each input at the first confident stage.
Import the submodules directly (``summon.adaptive.thresholds`` ...); this package imports nothing eagerly
so that model modules can use the executor without import cycles.
"""

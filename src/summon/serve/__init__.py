"""Serving: the engine (:mod:`summon.serve.engine`: queues, cross-request batching, per-request knobs,
overload errors, budget controllers, counters) apart from its transports, and the logits protocol (client and
server) that lets a remote teacher be a cascade stage."""

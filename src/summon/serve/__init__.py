"""Serving: the engine (:mod:`summon.serve.engine`: queues, cross-request batching, per-request knobs,
overload errors, budget controllers, counters) apart from its transports — the HTTP app of ``summon serve``
(:mod:`summon.serve.app`, with :mod:`summon.serve.metrics` and the demo page :mod:`summon.serve.demo`), the same
app in a Ray Serve deployment (:mod:`summon.serve.ray_app`) — and the logits protocol (client and server) that
lets a remote teacher be a cascade stage."""

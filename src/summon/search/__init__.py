"""The search layer: ``summon auto`` — one accuracy-vs-cost front across every method, and the cheapest predictor
that keeps a certified promise (:func:`summon.search.auto.run_auto`; options: :class:`summon.search.config.AutoConfig`;
the candidates: :mod:`summon.search.candidates`; the front, the choice and the certificate: :mod:`summon.search.front`).

Nothing is imported here, so parsing ``summon auto``'s flags (derived from the light ``config`` module) does not
wait for torch."""

"""PatchCore (METHODS §3): ``config`` (defaults) and ``method`` (fit, score,
run, predict)."""

"""FUN-AD (METHODS §1): ``config`` (defaults), ``model``, ``irmb``, ``losses``,
``step`` (the jitted training iteration) and ``method`` (fit, run, predict)."""

"""DiCo (METHODS §2): ``config`` (defaults), ``model``, ``masking``, ``losses``,
``scoring``, ``step`` (jitted train step and scoring) and ``method`` (run,
predict)."""

"""SoftPatch (METHODS §3): ``config`` (defaults) and ``method`` (the LOF
denoising before PatchCore's bank)."""

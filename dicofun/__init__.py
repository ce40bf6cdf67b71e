"""dicofun: industrial visual anomaly detection in JAX/Flax.

FUN-AD and DiCo, with PatchCore and SoftPatch as peers. See README.md.
"""

__version__ = "0.1.0"

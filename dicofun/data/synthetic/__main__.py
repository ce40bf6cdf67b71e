"""``python -m dicofun.data.synthetic``: writes the procedural dataset.

A package's ``__main__`` (not the module itself) so that ``python -m`` runs
it without runpy's "found in sys.modules" warning: ``dicofun.data`` imports
the generator to register the synthetic dataset.
"""

from absl import logging

from dicofun.data import synthetic

if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  synthetic.main()

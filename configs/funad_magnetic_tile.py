r"""FUN-AD on the magnetic tile dataset (crop 1.0 by default) (METHODS §1).

Run::

  python experiments/main.py --config=configs/funad_magnetic_tile.py:contamination=0.1 \
      --workdir=/tmp/funad_magnetic_tile

Args after the colon: category, contamination, overlap, rho, epochs (1500 =
paper), backbone (dinov2_vits14), layer (8), image_size (224), crop, seed,
root, refresh_every (1 = faithful), lr (2e-5), eval_every (0 = config default),
runlocal (3 epochs, batch 8, a CPU budget).
The result is the last epoch; ``extra.oracle`` in results.json is the
test-selected epoch, labelled as such.
"""

from dicofun.methods.funad import config as funad_config


def get_config(arg=None):
  return funad_config.funad_config("magnetic_tile", arg)

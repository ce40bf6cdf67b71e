"""What every benchmark script does first: find the development data.

Benchmarks (unlike the library) may look for the checkout's sibling
``../shared/data``: when ``$DICOFUN_DATA`` is unset and that folder exists it
becomes the data root, so ``--dataset=magnetic_tile`` finds
``../shared/data/magnetic_tile``.
"""

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "shared",
                           "data")


def use_shared_data() -> None:
  if "DICOFUN_DATA" not in os.environ and os.path.isdir(SHARED_DATA):
    os.environ["DICOFUN_DATA"] = SHARED_DATA

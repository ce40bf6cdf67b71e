"""``python -m dicofun`` and the ``dicofun`` console command (see ``cli``)."""

from dicofun import cpu

cpu.configure_cpu_devices()  # Before anything imports jax.

from dicofun import cli  # pylint: disable=g-import-not-at-top,wrong-import-position


def main() -> None:
  cli.main()


if __name__ == "__main__":
  main()

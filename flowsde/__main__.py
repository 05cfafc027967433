"""``python -m flowsde``: a shim for the command line in :mod:`flowsde.cli` (see docs/cli.md)."""

import sys


def main(argv=None) -> int:
    from flowsde.cli import main as cli_main  # the CLI sits on top of the library; the core never imports it

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())

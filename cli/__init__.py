"""flowsde.cli: the ``flowsde`` command (the top layer: it imports the library, nothing imports it).

    flowsde demo      # short compare + nll on the shipped digits model
    flowsde compare   # samplers NFE for NFE against references
    flowsde nll       # bits/dim of a data set (alias: flowsde likelihood)

See ``docs/cli.md``.
"""

from ._app import build_parser, main

__all__ = ["main", "build_parser"]

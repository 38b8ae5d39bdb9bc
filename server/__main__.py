"""The ``python -m opsgate.server`` entry point: ``opsgate serve`` when given only flags, else any subcommand.

``python -m opsgate.server [flags]`` serves over stdio, like ``opsgate serve [flags]``;
any other ``opsgate`` subcommand works here too."""

import sys

from opsgate.server.cli import main

argv = sys.argv[1:]
if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
    argv = ["serve", *argv]
sys.exit(main(argv))

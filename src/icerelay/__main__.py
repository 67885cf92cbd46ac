"""``python -m icerelay`` = the ``icerelay`` command."""

from icerelay.cli import main

main()

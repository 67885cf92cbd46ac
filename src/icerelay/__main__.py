"""``python -m icerelay`` = the ``icerelay`` command."""

from icerelay.commands.main import main

main()

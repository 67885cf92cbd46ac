"""Sub-commands of the ``icerelay`` CLI that live outside :mod:`icerelay.commands.main`.

Each module defines one click command; :mod:`icerelay.commands.main` registers it with
``main.add_command(...)``, so a command can grow without touching the daemon's CLI code.
"""

"""Sub-commands of the ``icerelay`` CLI that live outside :mod:`icerelay.cli`.

Each module defines one click command; :mod:`icerelay.cli` registers it with
``main.add_command(...)``, so a command can grow without touching the daemon's CLI code.
"""

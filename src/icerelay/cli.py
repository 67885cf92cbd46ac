"""The ``icerelay`` command (placeholder until the server and probe land)."""

import click


@click.group()
@click.version_option()
def main() -> None:
    """icerelay: NAT traversal for SIP media."""

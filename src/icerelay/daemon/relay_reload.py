"""What a reload (SIGHUP, ``icerelay ctl reload``) changes on a running media relay.

Sockets, the port range and files are bound at start: a new value for them is reported as
"restart needed" and the old one is kept, so a reload never drops a call. Everything else
(timeouts, ICE policy, latching settings, limits) takes effect at once; a new accounting target
is switched to by the replayer without losing a record (the journal keeps them meanwhile).
"""

from __future__ import annotations

from icerelay.daemon.accounting import Accounting, open_target
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.errors import ConfigError

__all__ = ["RESTART_SETTINGS", "reloaded_config"]

#: Settings a reload (SIGHUP) cannot change on a running relay: sockets, port ranges, files.
RESTART_SETTINGS = frozenset(
    {
        "enabled",
        "ng_listen",
        "ng_tcp",
        "address_ipv4",
        "address_ipv6",
        "advertised_ipv4",
        "advertised_ipv6",
        "port_min",
        "port_max",
        "mediaproxy_socket",
        "state_dir",
        "ng_cache_size",
        "ng_cache_ttl",
        "ng_cache_bytes",
        "mediaproxy_socket_mode",
        "raise_fd_limit",
        "dataplane",
    }
)



def reloaded_config(
    old: RelayServiceConfig, config: RelayServiceConfig, accounting: Accounting | None
) -> tuple[RelayServiceConfig, list[str]]:
    """The configuration to run with after a reload to ``config``, and one report line per
    change and per setting that needs a restart (left as it was). A new accounting target is
    handed to ``accounting`` here."""
    changed = [
        name for name in type(config).model_fields if getattr(old, name) != getattr(config, name)
    ]
    report = [f"relay.{name}: restart needed" for name in changed if name in RESTART_SETTINGS]
    kept = {name: getattr(old, name) for name in RESTART_SETTINGS}
    new = config.model_copy(update=kept)
    if new.accounting != old.accounting:
        if accounting is None or not new.accounting:
            report.append("relay.accounting: restart needed (the journal opens at start)")
            new = new.model_copy(update={"accounting": old.accounting})
        else:
            try:
                target = open_target(new.accounting)
            except ConfigError as error:
                report.append(f"relay.accounting: kept ({error})")
                new = new.model_copy(update={"accounting": old.accounting})
            else:
                accounting.set_target(target)
    report += [
        f"relay.{name}: {getattr(old, name)!r} -> {getattr(new, name)!r}"
        for name in changed
        if name not in RESTART_SETTINGS and getattr(old, name) != getattr(new, name)
    ]
    return new, report

"""``icerelay ctl``: look at and steer a running daemon through its HTTP API.

``list``, ``show CALL-ID``, ``delete CALL-ID``, ``statistics``, ``allocations``, ``drain`` and
``reload``, printed as plain-text tables (``--json`` prints the API's JSON instead). The daemon
is found at ``--url`` (default ``$ICERELAY_URL`` or ``http://127.0.0.1:9470``, the default
``[http] listen``), or from the daemon's own configuration with ``--config FILE``.

Tables are formatted here in a few lines rather than with a table library: the columns are
few and plain, and a dependency for them would be one more thing to install and keep in step
on every host that runs the daemon. Exit codes: 0 success, 1 the daemon refused or cannot be
reached, 2 bad usage.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from icerelay.daemon.config import HTTP_PORT

__all__ = ["ctl", "format_table"]

DEFAULT_URL = f"http://127.0.0.1:{HTTP_PORT}"
#: The header the daemon wants on requests that change something (see daemon/http.py).
_REQUEST_HEADER = "X-Icerelay-Request"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart; numbers right-aligned; None shown as ``-``."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for index, text in enumerate(row):
            widths[index] = max(widths[index], len(text))
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(widths[i]) if numeric[i] else value.ljust(widths[i])
            for i, value in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    text = str(value)
    # A Call-ID comes from SIP: keep terminal control characters out of the operator's screen.
    return "".join(c if c.isprintable() else "?" for c in text)


class _Api:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.url + path, method=method)
        if method != "GET":
            request.add_header(_REQUEST_HEADER, "1")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error", error.reason)
            except ValueError:
                message = error.reason
            _fail(f"{method} {path}: {error.code} {message}")
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            _fail(f"cannot reach the daemon at {self.url}: {reason} (is [http] listen set?)")


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"icerelay ctl: {message}", err=True)
    sys.exit(code)


def _quote(call_id: str) -> str:
    return urllib.parse.quote(call_id, safe="")


def _age(since: float | None) -> str:
    if since is None:
        return "-"
    seconds = max(0, int(time.time() - since))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _clock(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def _url_from_config(path: str) -> str:
    """The API's URL from a daemon configuration file's ``[http] listen``."""
    from icerelay.daemon.config import load_config
    from icerelay.errors import ConfigError

    try:
        listen = load_config(path=path, environ={}).http.listen
    except ConfigError as error:
        _fail(str(error), 2)
    if listen is None:
        _fail(f"{path}: [http] listen is off; the daemon has no API to talk to", 2)
    host = listen.host
    if ipaddress.ip_address(host).is_unspecified:
        # A wildcard listener is reached on loopback from this host.
        host = "::1" if ":" in host else "127.0.0.1"
    return f"http://[{host}]:{listen.port}" if ":" in host else f"http://{host}:{listen.port}"


@click.group()
@click.option(
    "--url",
    envvar="ICERELAY_URL",
    default=None,
    help=f"The daemon's HTTP API ([http] listen; default {DEFAULT_URL}).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Find the API from the daemon's configuration file instead.",
)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON, not tables.")
@click.pass_context
def ctl(
    ctx: click.Context, url: str | None, config_path: str | None, timeout: float, as_json: bool
) -> None:
    """Control a running icerelay daemon through its HTTP API."""
    if url is None:
        url = _url_from_config(config_path) if config_path is not None else DEFAULT_URL
    ctx.obj = (_Api(url, timeout), as_json)


def _context(ctx: click.Context) -> tuple[_Api, bool]:
    api, as_json = ctx.obj
    assert isinstance(api, _Api)
    return api, bool(as_json)


def _dump(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


@ctl.command("list")
@click.pass_context
def list_sessions(ctx: click.Context) -> None:
    """Live relay sessions, one line each."""
    api, as_json = _context(ctx)
    sessions = api.call("GET", "/api/sessions")["sessions"]
    if as_json:
        _dump(sessions)
        return
    rows = [
        (
            s["call_id"], s["from_tag"], s["to_tag"], s["state"], len(s["streams"]),
            _age(s["created"]),
            sum(st["caller"]["packets"] for st in s["streams"]),
            sum(st["callee"]["packets"] for st in s["streams"]),
        )
        for s in sessions
    ]  # fmt: skip
    headers = ("CALL-ID", "FROM-TAG", "TO-TAG", "STATE", "STREAMS", "AGE", "PKTS-A", "PKTS-B")
    click.echo(format_table(headers, rows))
    click.echo(f"{len(sessions)} session(s)")


@ctl.command()
@click.argument("call_id")
@click.pass_context
def show(ctx: click.Context, call_id: str) -> None:
    """One call: its sessions and streams (latched addresses, ICE, traffic)."""
    api, as_json = _context(ctx)
    data = api.call("GET", f"/api/sessions/{_quote(call_id)}")
    if as_json:
        _dump(data)
        return
    for session in data["sessions"]:
        click.echo(
            format_table(
                ("CALL-ID", "FROM-TAG", "TO-TAG", "STATE", "CREATED", "ANSWERED"),
                [(
                    session["call_id"], session["from_tag"], session["to_tag"], session["state"],
                    _clock(session["created"]), _clock(session["answered"]),
                )],
            )
        )
        rows = []
        for stream in session["streams"]:
            ice = stream["ice"]
            ice_text = ice["state"]
            if ice["step_aside"]:
                ice_text += f" at {_clock(ice['step_aside_time'])}"
            for side in ("caller", "callee"):
                leg = stream[side]
                rows.append(
                    (
                        stream["index"], stream["media"], side, stream["relay_ports"][side],
                        leg["latched_rtp"] or stream["sdp_peers"][side], leg["packets"],
                        leg["bytes"], leg["dropped"], ice_text,
                    )
                )  # fmt: skip
        click.echo()
        click.echo(
            format_table(
                ("#", "MEDIA", "SIDE", "RELAY-PORT", "PEER", "PACKETS", "BYTES", "DROPPED", "ICE"),
                rows,
            )
        )
        click.echo()


@ctl.command()
@click.argument("call_id")
@click.pass_context
def delete(ctx: click.Context, call_id: str) -> None:
    """End a call now (its records are written)."""
    api, as_json = _context(ctx)
    data = api.call("DELETE", f"/api/sessions/{_quote(call_id)}")
    if as_json:
        _dump(data)
    else:
        click.echo(f"deleted {data['deleted']} session(s) of {_cell(call_id)}")


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


@ctl.command()
@click.pass_context
def statistics(ctx: click.Context) -> None:
    """The daemon's counters (relay, TURN, STUN)."""
    api, as_json = _context(ctx)
    data = api.call("GET", "/api/statistics")
    if as_json:
        _dump(data)
        return
    data.pop("time", None)
    click.echo(format_table(("NAME", "VALUE"), [(k, _cell(v)) for k, v in _flatten(data)]))


@ctl.command()
@click.pass_context
def allocations(ctx: click.Context) -> None:
    """Live TURN allocations."""
    api, as_json = _context(ctx)
    data = api.call("GET", "/api/turn/allocations")["allocations"]
    if as_json:
        _dump(data)
        return
    rows = [
        (
            a["client"], a["transport"], a["username"], ",".join(a["relayed"]),
            len(a["permissions"]), len(a["channels"]), a["packets_to_peers"],
            a["packets_to_client"], a["expires_in"],
        )
        for a in data
    ]  # fmt: skip
    headers = ("CLIENT", "PROTO", "USER", "RELAYED", "PERMS", "CHANNELS", "TO-PEERS", "TO-CLIENT",
               "EXPIRES")  # fmt: skip
    click.echo(format_table(headers, rows))


@ctl.command()
@click.pass_context
def cluster(ctx: click.Context) -> None:
    """The cluster as this daemon sees it: instances, the calls each owns, adoptions."""
    api, as_json = _context(ctx)
    data = api.call("GET", "/api/cluster")
    if as_json:
        _dump(data)
        return
    rows = [
        (name, "yes" if item.get("alive") else "no", item.get("ng") or "-", item.get("calls", 0))
        for name, item in sorted(data["instances"].items())
    ]
    click.echo(f"instance {data['instance']}, redis {data['redis']}")
    click.echo(format_table(("INSTANCE", "ALIVE", "NG", "CALLS"), rows))
    adoptions = data.get("adoptions") or []
    if adoptions:
        click.echo(f"adoptions: {len(adoptions)}, latest: {adoptions[-1]}")


@ctl.command()
@click.pass_context
def drain(ctx: click.Context) -> None:
    """Take no new sessions or allocations; the daemon stops once the last one ended."""
    api, as_json = _context(ctx)
    data = api.call("POST", "/api/drain")
    if as_json:
        _dump(data)
    else:
        click.echo("draining")


@ctl.command()
@click.pass_context
def reload(ctx: click.Context) -> None:
    """Re-read the configuration (as SIGHUP does)."""
    api, as_json = _context(ctx)
    data = api.call("POST", "/api/reload")
    if as_json:
        _dump(data)
    else:
        click.echo(f"reloaded: {data.get('summary', '')}")

"""Which data plane the media relay runs on: ``[relay] dataplane`` = auto, kernel or userspace.

``kernel`` is the nftables plane (:mod:`icerelay.dataplane.nftables`) or nothing: without root,
python3-nftables or a working nf_tables the relay refuses to start and says why. ``auto`` takes
the kernel when it can and otherwise runs in userspace, with one log line giving the reason.
``userspace`` keeps every packet in the relay process.
"""

from __future__ import annotations

import logging

from icerelay.control.ng import ReplyValue
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.dataplane import DataPlane
from icerelay.dataplane.libnft import unavailable_reason
from icerelay.dataplane.nftables import NftablesDataPlane
from icerelay.dataplane.userspace import UserspaceDataPlane
from icerelay.errors import ConfigError, RelayError

__all__ = ["dataplane_name", "dataplane_statistics", "start_dataplane"]

logger = logging.getLogger("icerelay.relay")


async def start_dataplane(
    config: RelayServiceConfig, default: DataPlane, *, choose: bool = True
) -> DataPlane:
    """The started plane ``config.dataplane`` asks for; ``default`` (the userspace plane, or a
    plane given in code: ``choose=False``) otherwise. ConfigError when ``kernel`` cannot be."""
    mode = config.dataplane
    if choose and mode != "userspace":
        reason = unavailable_reason()
        if reason is None:
            kernel = NftablesDataPlane(
                config.port_min, config.port_max, poll_interval=config.kernel_poll_interval
            )
            try:
                await kernel.start()
            except RelayError as error:
                reason = f"nftables refused the ruleset: {error}"
            else:
                logger.info("relay.dataplane", extra={"plane": "kernel"})
                return kernel
        if mode == "kernel":
            raise ConfigError(f"relay.dataplane = kernel, but {reason}")
        logger.warning("relay.dataplane_userspace", extra={"wanted": mode, "reason": reason})
    await default.start()
    logger.info("relay.dataplane", extra={"plane": dataplane_name(default)})
    return default


def dataplane_name(plane: DataPlane) -> str:
    """The plane's name: kernel, userspace, or the class of a plane given in code."""
    if isinstance(plane, NftablesDataPlane):
        return "kernel"
    if isinstance(plane, UserspaceDataPlane):
        return "userspace"
    return type(plane).__name__


def dataplane_statistics(plane: DataPlane) -> dict[str, ReplyValue]:
    """For ng ``statistics``: the plane's name, and the kernel plane's route and packet counts."""
    values: dict[str, ReplyValue] = {"dataplane": dataplane_name(plane)}
    if isinstance(plane, NftablesDataPlane):
        values["kernel_routes"] = plane.offloaded_count
        values["kernel_packets"] = plane.kernel_packets
        values["kernel_errors"] = plane.errors
    return values

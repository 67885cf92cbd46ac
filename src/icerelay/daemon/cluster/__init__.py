"""Scale-out and failover on Redis (issue 15): see :mod:`.service`."""

from icerelay.daemon.cluster.recovery import take_adopted
from icerelay.daemon.cluster.service import ClusterService

__all__ = ["ClusterService", "take_adopted"]

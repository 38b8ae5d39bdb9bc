"""The watch cache behind the read tools (client-go's informer pattern): list+watch per namespace and kind.

``list_workloads``, ``rollout_status``, ``rollout_history`` and ``model_status`` read through
:func:`read_one` / :func:`read_all`: from a cache kept current by a watch when it is on, live and has
seen this server's own writes there, else from the API server, and their result says which
(``source``, :class:`~opsgate.tools.structs.freshness.Freshness`). ``scale`` computes its write from a
cached copy when one is current and has been quiet for a second (:func:`read_for_write`), and then guards
the write with that copy's resourceVersion; every other write reads the API server. ``store`` and
``versions`` are pure; ``reflector`` holds the one watch thread per (namespace, kind); ``cache`` the bounds,
idle drop and read-your-write.
One cache per cluster and per credentials (:attr:`Kube.cache_key <opsgate.tools.kube.Kube.cache_key>`).
"""

from .cache import ReadCache, read_all, read_for_write, read_one
from .resources import DEPLOYMENTS, REPLICA_SETS, Resource

__all__ = ["DEPLOYMENTS", "REPLICA_SETS", "ReadCache", "Resource", "read_all", "read_for_write", "read_one"]

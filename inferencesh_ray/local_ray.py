"""Start (or join) the Ray that the framework runs on.

A Ray the framework starts itself listens on 127.0.0.1 only, with no dashboard and so
no job submission API: the ingress is the only door. To join a cluster instead, pass
its address (or set RAY_ADDRESS).
"""

from __future__ import annotations

import os
from typing import Optional

# Ray maps a node IP of 127.0.0.1 to this machine's routable address unless it believes
# it runs outside a cluster; say so before Ray is imported, for this process and the
# raylet, agents and workers it starts.
_SINGLE_NODE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """Connect to `address` (or $RAY_ADDRESS), else start a private loopback Ray; True if we started it."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.update(_SINGLE_NODE)
    import ray
    from ray._private import ray_constants

    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    ray_constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before us
    ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, log_to_driver=True)
    return True

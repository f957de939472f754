"""A Docker Swarm cluster on this one machine, for the swarm runtime's tests and benchmark.

The manager is the host's own Docker Engine; the workers are containers that run
their own dockerd (Debian's ``docker.io``) on the stack's debootstrapped base image.
Used by ``tests/integration/test_swarm.py`` (one cluster per test session) and by
``bench/failover.py``.

What works for dockerd-in-container here (see DESIGN.md, Known pitfalls): every
capability but CAP_SYS_RESOURCE added by name (``--privileged`` and ``--cap-add ALL``
fail: the host's bounding set lacks it), seccomp, AppArmor and system paths
unconfined, ``/sys/fs/cgroup`` mounted read-write, ``/var/lib/docker`` on a named
volume, overlay2 inside. The host's engine becomes the Swarm manager advertising
its address on the nodes' bridge network (only if it is not in a swarm already),
and the workers join. ``close()`` removes everything ``Cluster`` created and leaves
the swarm only if it initialised it.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import secrets
import tarfile

import docker
import docker.errors
import docker.types

from helpers import wait_for

__all__ = ["Cluster", "node_image", "LABEL"]

log = logging.getLogger("bae.tests.cluster")

LABEL = "bae.test-cluster"
LOCK = "/tmp/bae-test-cluster.lock"
SUBNET = "10.213.7.0/24"  # on every container, volume and network a Cluster creates

# Every capability this engine (20.10) knows and the host can grant (its bounding set lacks CAP_SYS_RESOURCE).
CAPS = ["AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "CHOWN",
        "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE",
        "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE",
        "NET_BROADCAST", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_ADMIN",
        "SYS_BOOT", "SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO",
        "SYS_TIME", "SYS_TTY_CONFIG", "SYSLOG", "WAKE_ALARM"]

DOCKERFILE = """\
ARG BASE
FROM ${BASE}
ARG MIRROR
ENV LANG=C.UTF-8
RUN printf 'deb %s bookworm main\\n' "$MIRROR" > /etc/apt/sources.list && rm -f /etc/apt/sources.list.d/* \\
 && apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io iptables \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
CMD ["dockerd", "--storage-driver=overlay2", "--host=unix:///var/run/docker.sock", "--log-level=warn"]
"""


def _engine() -> docker.DockerClient:
    return docker.from_env(version="auto", timeout=300)


def node_image(engine: docker.DockerClient | None = None) -> str:
    """The node image (stack base + docker.io + iptables), built once per recipe hash."""
    from bae.config import Settings
    from bae import mirrors
    from buildpacks import stack

    engine = engine or _engine()
    build = Settings().build
    base = stack.ensure_base(build, lambda line: log.info("%s", line))  # bootstrapped only if it is missing
    mirror = mirrors.debian_mirror(build.debian_mirror)
    tag = "bae/test-node:" + hashlib.sha256((base + mirror + DOCKERFILE).encode()).hexdigest()[:12]
    try:
        engine.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        data = DOCKERFILE.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    for chunk in engine.api.build(fileobj=context, custom_context=True, tag=tag, pull=False, rm=True, forcerm=True,
                                  buildargs={"BASE": base, "MIRROR": mirror}, decode=True,
                                  labels={LABEL: "image"}):
        if "error" in chunk:
            raise RuntimeError(f"building the node image failed: {chunk['error']}")
    return tag


class Cluster:
    """The host's engine as Swarm manager plus dockerd-in-container workers on one bridge network."""

    def __init__(self, workers: int = 2, names: str = "n") -> None:
        # One cluster at a time on this machine: test runs started side by side (other worktrees, a
        # benchmark) would share the one swarm, its node names and the registry port; the later waits.
        self._lock = open(LOCK, "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.engine = _engine()
        self.run_id = secrets.token_hex(3)
        self.prefix = f"bae-swarm-{self.run_id}"
        self.image = node_image(self.engine)
        self.initialised = False
        self.nodes: dict[str, str] = {}  # hostname -> container name
        self.names = names  # hostnames are NAMES1, NAMES2, ... (unique in a swarm another Cluster also uses)
        self.network = self._network()
        try:
            self.network.reload()
            self.address = self.network.attrs["IPAM"]["Config"][0]["Gateway"]  # the manager, as nodes see it
            self._init_swarm()
            for _ in range(workers):
                self.add_node()
        except BaseException:
            self.close()
            raise

    def _network(self):
        """The nodes' bridge, on a fixed subnet when it is free: the registry's address (the gateway)
        then stays the same from run to run, and the host's engine pushes only new layers."""
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=SUBNET, gateway=SUBNET.replace(".0/24", ".1"))])
        try:
            return self.engine.networks.create(self.prefix, driver="bridge", ipam=ipam, labels={LABEL: self.run_id})
        except docker.errors.APIError:  # taken (another cluster, or a network of the machine's)
            return self.engine.networks.create(self.prefix, driver="bridge", labels={LABEL: self.run_id})

    def _init_swarm(self) -> None:
        state = self.engine.info()["Swarm"]
        if state.get("LocalNodeState") == "active" and state.get("ControlAvailable") and \
                not self.engine.api.services() and \
                not [n for n in self.engine.api.nodes() if n["Spec"]["Role"] == "worker" and n["Status"]["State"] == "ready"]:
            # no service and no live worker: a test cluster's swarm an interrupted run left behind
            log.info("leaving a swarm with no live worker and no service (left by an interrupted run)")
            self.engine.swarm.leave(force=True)
            state = self.engine.info()["Swarm"]
        if state.get("LocalNodeState") == "active":
            if not state.get("ControlAvailable"):
                raise RuntimeError("this Docker Engine is a swarm worker; the cluster needs it as a manager")
            self.address = state["NodeAddr"]  # a swarm of the operator's: join it where it listens
            log.info("the host is already a swarm manager at %s; using it", self.address)
            return
        self.engine.swarm.init(advertise_addr=self.address, listen_addr=f"{self.address}:2377")
        self.initialised = True

    @property
    def join_token(self) -> str:
        return self.engine.swarm.attrs["JoinTokens"]["Worker"]

    def start_node(self, hostname: str) -> docker.models.containers.Container:
        """A dockerd-in-container on the nodes' network (not joined yet)."""
        name = f"{self.prefix}-{hostname}"
        api = self.engine.api
        host_config = api.create_host_config(
            init=True, cap_add=CAPS, security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            binds={f"{name}-docker": {"bind": "/var/lib/docker", "mode": "rw"},
                   "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
            tmpfs={"/run": "", "/tmp": ""}, network_mode=self.network.name)
        host_config.update(MaskedPaths=[], ReadonlyPaths=[])  # --security-opt systempaths=unconfined
        api.create_volume(f"{name}-docker", labels={LABEL: self.run_id})
        cid = api.create_container(self.image, name=name, hostname=hostname, host_config=host_config,
                                   labels={LABEL: self.run_id})["Id"]
        api.start(cid)
        container = self.engine.containers.get(cid)
        self.nodes[hostname] = name
        wait_for(lambda: self.exec(hostname, "docker", "info", check=False)[0] == 0, 60, what=f"dockerd in {hostname}")
        return container

    def add_node(self, hostname: str | None = None, join: bool = True) -> str:
        hostname = hostname or f"{self.names}{len(self.nodes) + 1}"
        self.start_node(hostname)
        if join:
            self.exec(hostname, "docker", "swarm", "join", "--token", self.join_token, f"{self.address}:2377")
            wait_for(lambda: self.node_state(hostname) == "ready", 60, what=f"{hostname} to be ready in the swarm")
        return hostname

    def exec(self, hostname: str, *cmd: str, check: bool = True, stdin: bytes | None = None) -> tuple[int, str]:
        container = self.engine.containers.get(self.nodes[hostname])
        if stdin is None:
            code, out = container.exec_run(list(cmd))
        else:  # the docker SDK cannot feed an exec's stdin simply: write it to a file first
            path = f"/root/stdin-{secrets.token_hex(4)}"  # not /tmp: put_archive cannot write into a tmpfs
            container.put_archive("/root", _tar(path.rsplit("/", 1)[1], stdin))
            code, out = container.exec_run(["sh", "-c", '"$0" "$@" < ' + path, *cmd])
        text = out.decode(errors="replace")
        if check and code != 0:
            raise RuntimeError(f"{' '.join(cmd)} on {hostname} failed ({code}): {text[-500:]}")
        return code, text

    def trust(self, registry: str, ca_pem: bytes) -> None:
        """Make every node trust a registry's CA (docker reads certs.d on each pull: no restart)."""
        for hostname in self.nodes:
            self.exec(hostname, "mkdir", "-p", f"/etc/docker/certs.d/{registry}")
            self.exec(hostname, "tee", f"/etc/docker/certs.d/{registry}/ca.crt", stdin=ca_pem)

    def _node(self, hostname: str) -> dict | None:
        nodes = self.engine.api.nodes(filters={"name": hostname})
        nodes = [n for n in nodes if n["Description"]["Hostname"] == hostname]
        if not nodes:
            return None
        return max(nodes, key=lambda n: n.get("CreatedAt", ""))  # a re-joined node is a new one

    def node_state(self, hostname: str) -> str | None:
        node = self._node(hostname)
        return node["Status"]["State"] if node else None

    def kill(self, hostname: str) -> None:
        """The machine dies: its container is killed (no goodbye to the manager)."""
        self.engine.containers.get(self.nodes[hostname]).kill()

    def revive(self, hostname: str) -> None:
        self.engine.containers.get(self.nodes[hostname]).start()
        wait_for(lambda: self.exec(hostname, "docker", "info", check=False)[0] == 0, 60, what=f"dockerd in {hostname}")

    def close(self) -> None:
        """Remove the nodes, their volumes and the network; leave the swarm if we initialised it."""
        for hostname, name in list(self.nodes.items()):
            node = self._node(hostname)
            try:
                self.engine.api.remove_container(name, force=True, v=True)
            except docker.errors.NotFound:
                pass
            if node and not self.initialised:
                try:
                    self.engine.api.remove_node(node["ID"], force=True)
                except docker.errors.APIError:
                    pass
            try:
                self.engine.api.remove_volume(f"{name}-docker", force=True)
            except docker.errors.APIError:
                pass
        self.nodes.clear()
        if self.initialised:
            try:
                self.engine.swarm.leave(force=True)
            except docker.errors.APIError as exc:
                log.warning("leaving the swarm failed: %s", exc)
            self.initialised = False
        try:
            self.network.remove()
        except docker.errors.APIError:
            pass
        fcntl.flock(self._lock, fcntl.LOCK_UN)


def _tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()

"""Workers on a Ray cluster: one node supervisor per node; the head driver is unchanged.

``--backend ray``: the head driver (this process) connects to a Ray cluster, reserves one bundle
per node in a STRICT_SPREAD placement group (so every node index is a different Ray node), and
starts one :class:`NodeSupervisor` actor in each bundle. A supervisor *is* the local executor
(:mod:`pipeobs.executors.local`) running on its node: it spawns that node's worker processes
(``processNNN``), holds their pipes, parses their streams and carries their protocol messages, so
a worker behaves exactly as it does locally (fd-level capture, in-band markers, a killed worker
loses no line). What it hears (connections, messages, parsed lines / metrics / spans, exits) it
buffers and hands to the head in batches: the head keeps one long-poll ``fetch`` outstanding per
node. Commands from the head (spawn, send, kill) travel in batches too, mostly inside the next
fetch (one call carries the driver's answer out and the node's news back), numbered so that a
supervisor applies them in the order given (the calls of a threaded actor may start out of order).
Output alone waits up to 50 ms for the result that follows it, so a mini-batch costs about one
round trip.

The head driver stays the only writer of the run directory, the ledger and the outputs; inputs
are read where the workers run, so their paths must exist on every node (checked at start).
When a supervisor dies (its actor, or its raylet, killed), the head reports ``node_lost`` and an
exit for each of that node's workers: the driver fails their attempts with ``NODE_LOST`` and
retries them on the nodes left.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from pipeobs.errors import ConfigError
from pipeobs.executors.base import Executor, ExecutorEvents, WorkerSpec
from pipeobs.executors.ray_supervisor import Connected, NodeFailed, NodeSupervisor, Said, Sampled, Wrote
from pipeobs.protocol import Message

INSTALL_HINT = "--backend ray needs Ray: pip install 'pipeobs[ray]'"
FETCH_WAIT = 0.5  # seconds a supervisor holds a fetch open while it has nothing to report
POLL_SLICE = 0.02  # the head's wait between checks of wake() while no node reports
PLACEMENT_TIMEOUT = 60.0
UNAVAILABLE_GRACE = 30.0  # seconds a supervisor may be unreachable before its node counts as lost


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


# ----------------------------------------------------------------------------- on the head
class RayExecutor(Executor):
    """The head's side: a supervisor per node, commands out and events in, in batches.

    Connecting, placing the supervisors and checking that every node sees ``paths`` happen here,
    before the run starts, so a cluster that cannot run the job is a one-line error.
    """

    name = "ray"
    local_pids = False  # worker pids belong to other machines: the head does not sample them

    def __init__(self, address: str | None, node_count: int, paths: Sequence[str], sample_interval: float = 0.0) -> None:
        self.ray = import_ray()
        self.sample_interval = sample_interval
        self.address = address
        self.node_count = node_count
        self._events: ExecutorEvents | None = None
        self._started_ray = False
        self.group: Any = None  # the placement group
        self.supervisors: list[Any] = []
        self.nodes: list[dict[str, Any]] = []
        self.fetching: dict[Any, int] = {}  # outstanding fetch -> node
        self.outbox: dict[int, list[tuple[int, str, tuple[Any, ...]]]] = {}
        self.sequence = [0] * node_count
        self.workers: dict[str, int] = {}  # label -> node, until its exit is reported
        self.lost: dict[int, str] = {}  # node -> why
        self.unavailable: dict[int, float] = {}  # node -> since when its supervisor cannot be reached
        self.retry_at: dict[int, float] = {}  # node -> when to fetch again after it could not be reached
        self.answered: list[int] = []  # nodes whose fetch returned: re-armed at the next poll
        self._wake = threading.Event()
        self._closed = False
        try:
            self._connect()
            self._place()
            self._check(paths)
        except BaseException:
            self.close()
            raise

    @property
    def events(self) -> ExecutorEvents:
        if self._events is None:
            raise RuntimeError("RayExecutor.open() was not called")
        return self._events

    @property
    def gpus_per_node(self) -> int:
        return min((n["gpus"] for n in self.nodes), default=0)

    def describe_node(self, node: int) -> str:
        return f"node {node} {self._where(node)}"

    def _where(self, node: int) -> str:
        """``(host H, Ray node ID)``: where a node's supervisor runs."""
        info = self.nodes[node] if node < len(self.nodes) else {}
        return f"(host {info.get('host', '?')}, Ray node {str(info.get('node_id', '?'))[:12]})"

    def placement(self) -> list[str]:
        return [f"Node {n['node']} {self._where(n['node'])}: supervisor pid {n['pid']}, {n['gpus']} GPU(s)."
                for n in self.nodes]

    # ------------------------------------------------------------------ start
    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        where = self.address or os.environ.get("RAY_ADDRESS") or "a new local Ray instance"
        host = _probe(self.address) if self.address and self.address != "auto" else None
        options: dict[str, Any] = {"_node_ip_address": host} if host in ("127.0.0.1", "localhost") else {}
        try:  # a loopback cluster: this process joins it on loopback too (no probe of a public resolver)
            ray.init(address=self.address, namespace="pipeobs", logging_level=logging.WARNING, log_to_driver=False,
                     include_dashboard=False, configure_logging=False, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {where}: {_first_line(exc)} "
                              "(check --ray-address and that `ray status` answers there)") from None
        self._started_ray = True

    def _place(self) -> None:
        ray = self.ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        alive = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
        if len(alive) < self.node_count:
            raise ConfigError(f"node_count {self.node_count} needs {self.node_count} Ray nodes with a CPU; the cluster "
                              f"has {len(alive)}: lower node_count or add nodes")
        gpus = int(min(n["Resources"].get("GPU", 0) for n in alive))
        bundle: dict[str, float] = {"CPU": 1, **({"GPU": gpus} if gpus else {})}
        self.group = placement_group([bundle] * self.node_count, strategy="STRICT_SPREAD")
        try:
            ray.get(self.group.ready(), timeout=PLACEMENT_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.group)
            self.group = None
            raise ConfigError(f"Ray could not place {self.node_count} node supervisors on {self.node_count} distinct "
                              f"nodes within {PLACEMENT_TIMEOUT:.0f} s (each needs {bundle} free): free resources or "
                              "lower node_count") from None
        actor = ray.remote(NodeSupervisor)
        self.supervisors = [
            actor.options(
                num_cpus=1, num_gpus=gpus, max_concurrency=8, max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=i),
            ).remote(i)
            for i in range(self.node_count)
        ]
        self.nodes = ray.get([s.describe.remote() for s in self.supervisors], timeout=PLACEMENT_TIMEOUT)

    def _check(self, paths: Sequence[str]) -> None:
        """Every node sees the inputs, the entry script and the model folder (they are read where workers run)."""
        wanted = sorted({str(p) for p in paths})
        found = self.ray.get([s.missing.remote(wanted) for s in self.supervisors], timeout=PLACEMENT_TIMEOUT)
        for node, missing in enumerate(found):
            if missing:
                raise ConfigError(f"{self.describe_node(node)} cannot see {missing[0]}"
                                  f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: workers read "
                                  "inputs and the entry script where they run, so put them on a folder every node "
                                  "mounts at the same path")

    def open(self, events: ExecutorEvents, token: str) -> None:
        self._events = events
        self.ray.get([s.open.remote(token, self.sample_interval) for s in self.supervisors])
        for node in range(self.node_count):
            self._arm(node)

    def _arm(self, node: int) -> None:
        """The next fetch from ``node``, carrying the commands queued for it (one call both ways)."""
        self.fetching[self.supervisors[node].fetch.remote(FETCH_WAIT, self.outbox.pop(node, None))] = node

    # ------------------------------------------------------------------ commands
    def spawn(self, spec: WorkerSpec) -> int | None:
        self.workers[spec.label] = spec.node
        self._command(spec.node, "spawn", (spec,))
        return None  # the pid comes with worker_connected

    def send(self, worker: str, message: Message) -> bool:
        node = self.workers.get(worker)
        if node is None:
            return False
        self._command(node, "send", (worker, message))
        return True

    def kill(self, worker: str) -> None:
        node = self.workers.get(worker)
        if node is not None:
            self._command(node, "kill", (worker,))

    def _command(self, node: int, verb: str, args: tuple[Any, ...]) -> None:
        self.outbox.setdefault(node, []).append((self.sequence[node], verb, args))
        self.sequence[node] += 1

    def _send_commands(self) -> None:
        for node, batch in self.outbox.items():
            if batch and node not in self.lost:
                self.supervisors[node].commands.remote(batch)
        self.outbox.clear()

    # ------------------------------------------------------------------ events
    def poll(self, timeout: float) -> bool:
        """Re-arm the nodes that answered last time, with what the driver has said since (its dispatch
        after their results rides along), send the other nodes' commands, then wait for answers."""
        ray = self.ray
        answered, self.answered = self.answered, []
        for node in answered:
            if node not in self.lost:
                self._arm(node)
        self._send_commands()
        deadline = time.monotonic() + timeout
        while True:
            got = False
            self._rearm_unavailable()
            refs = list(self.fetching)
            if refs:
                ready, rest = ray.wait(refs, num_returns=1, timeout=max(0.0, min(POLL_SLICE, deadline - time.monotonic())))
                if ready and rest:
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
                for ref in ready:
                    self._take(ref)
                got = got or bool(ready)
            else:
                self._wake.wait(max(0.0, min(POLL_SLICE, deadline - time.monotonic())))
            if got or self._wake.is_set() or time.monotonic() >= deadline:
                self._wake.clear()
                return got

    def _take(self, ref: Any) -> None:
        node = self.fetching.pop(ref)
        exceptions = self.ray.exceptions
        try:
            events = self.ray.get(ref)
        except exceptions.ActorUnavailableError as exc:  # maybe a short outage: fetch again, for a while
            since = self.unavailable.setdefault(node, time.monotonic())
            if time.monotonic() - since > UNAVAILABLE_GRACE:
                self._node_lost(node, f"unreachable for {UNAVAILABLE_GRACE:.0f} s: {_first_clause(exc)}")
            else:
                self.retry_at[node] = time.monotonic() + 0.5
            return
        except (exceptions.RayActorError, exceptions.WorkerCrashedError, exceptions.RayTaskError) as exc:
            cause = getattr(exc, "cause", None)
            self._node_lost(node, str(cause) if isinstance(cause, NodeFailed) else _first_clause(exc))
            return
        self.unavailable.pop(node, None)
        self.answered.append(node)  # fetched again at the next poll, with the driver's answer to these
        deliver = self.events
        for event in events:
            kind = type(event)
            if kind is Wrote:
                deliver.worker_output(event.worker, event.items)
            elif kind is Said:
                deliver.worker_message(event.worker, event.message)
            elif kind is Connected:
                deliver.worker_connected(event.worker, event.pid)
            elif kind is Sampled:
                deliver.node_sampled(node, event.samples, event.machine)
            else:
                self.workers.pop(event.worker, None)
                deliver.worker_exited(event.worker, event.returncode)

    def _rearm_unavailable(self) -> None:
        now = time.monotonic()
        for node, when in list(self.retry_at.items()):
            if when <= now:
                del self.retry_at[node]
                self._arm(node)

    def _node_lost(self, node: int, why: str) -> None:
        """The supervisor is gone (or given up on: it is killed): so are its workers, whose channel and
        pipes were its own."""
        self.lost[node] = why
        self.outbox.pop(node, None)
        try:
            self.ray.kill(self.supervisors[node])
        except Exception:  # noqa: BLE001 - already gone with its node
            pass
        self.events.node_lost(node, f"{self.describe_node(node)} is gone ({why.rstrip('.')})")
        for worker, where in list(self.workers.items()):
            if where == node:
                del self.workers[worker]
                self.events.worker_exited(worker, -signal.SIGKILL)

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray = self.ray
        try:
            if self.supervisors:
                self._send_commands()
                closing = [s.close.remote() for node, s in enumerate(self.supervisors) if node not in self.lost]
                ray.wait(closing, num_returns=len(closing), timeout=30)
            for supervisor in self.supervisors:
                ray.kill(supervisor)
            if self.group is not None:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(self.group)
        finally:
            if self._started_ray:
                ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _first_clause(exc: BaseException) -> str:
    """Ray's error, short: its first sentence."""
    return _first_line(exc).split(". ")[0].split(": The ")[0].rstrip(".")


def _probe(address: str, timeout: float = 5.0) -> str:
    """The host of ``HOST:PORT`` once something listens there, or a ConfigError (``ray.init`` would
    retry for minutes)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"no Ray cluster answers at {address} ({exc}): start one (`ray start --head`) or fix "
                          "--ray-address") from None
    return host

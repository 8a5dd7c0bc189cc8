"""A real Ray cluster for the tests: two raylets on this machine, loopback only.

``ray start --head`` and ``ray start --address`` (each ``--block``, in its own process group, so a
test session stops exactly its own cluster), ``--num-cpus 1`` each, no dashboard, a small object
store. Each raylet declares two GPUs (Ray only counts them: nothing here needs a real GPU) so the
``CUDA_VISIBLE_DEVICES`` per worker can be checked. The second raylet can run in a mount namespace
where one folder is hidden (an empty tmpfs over it): a node that cannot see an input.

Ray looks for its own address by probing a public resolver, so the tests must run in a network
namespace with only loopback (``unshare -n``; ``bash .ci/run`` does it): nothing may leave
127.0.0.0/8. Outside one, the fixture fails saying so.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

# Token auth off: a ~/.ray/auth_token left by any other Ray on this machine would otherwise turn it on.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
OBJECT_STORE = str(80 * 2**20)
READY = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + 90
while sum(1 for n in ray.nodes() if n["Alive"]) < 2:
    if time.monotonic() > deadline:
        sys.exit("the second raylet did not join")
    time.sleep(0.2)
"""


@dataclass
class RayCluster:
    address: str
    hidden: Path  # a folder the second node (node 1's raylet) sees empty
    logs: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, **RAY_ENV}


def only_loopback() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    if not only_loopback():
        pytest.fail("the Ray tests must run in a network namespace with only loopback, as bash .ci/run runs them: "
                    "unshare -n sh -c 'ip link set lo up && exec python -m pytest ...' (as root)")
    with two_raylets(tmp_path_factory.mktemp("ray")) as cluster:
        yield cluster


@contextmanager
def two_raylets(root: Path, num_gpus: int = 2) -> Iterator[RayCluster]:
    """Start the cluster (logs and the hidden folder under ``root``); stop it on exit."""
    hidden = root / "hidden"
    hidden.mkdir()
    temp = Path("/tmp") / f"pipeobs-ray-{os.getpid()}-{root.name}"  # Ray's socket paths must stay short
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", str(num_gpus), "--object-store-memory",
              OBJECT_STORE, "--disable-usage-stats", "--block"]
    env = {**os.environ, **RAY_ENV}
    processes: list[subprocess.Popen[bytes]] = []
    with open(root / "head.log", "wb") as head_log, open(root / "node1.log", "wb") as node_log:
        try:
            processes.append(subprocess.Popen(
                [_ray(), "start", "--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir",
                 str(temp), *common], stdout=head_log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
            _wait_for_port(port, processes[0])
            second = [_ray(), "start", "--address", address, *common]
            hide = f"mount -t tmpfs tmpfs {hidden} && exec \"$@\""
            processes.append(subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", hide, "sh", *second],
                stdout=node_log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
            subprocess.run([sys.executable, "-c", READY, address], env=env, check=True, timeout=120,
                           capture_output=True)
            yield RayCluster(address, hidden, root)
        finally:
            for process in reversed(processes):
                _stop(process)
            shutil.rmtree(temp, ignore_errors=True)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ray start --head exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the Ray head did not listen on {port} within {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to ``ray start --block`` stops its raylet's processes; then the whole group is killed."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()

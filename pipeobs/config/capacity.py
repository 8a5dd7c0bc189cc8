"""How many worker processes one job may start on this machine.

A count far beyond the machine (``--process-count-per-node 100000``) starts hundreds of workers
that never get to a mini-batch, so it is refused before anything starts. The limit is
:data:`WORKERS_PER_CPU` workers per CPU (room for I/O-bound work, which oversubscribes the CPUs)
and one per :data:`MEMORY_PER_WORKER` of available memory (an idle worker holds about 25 MiB),
and never less than one per CPU (Azure's default count). ``PIPEOBS_ALLOW_MANY_PROCESSES=1``
lifts it.
"""

from __future__ import annotations

import os

from pipeobs import env
from pipeobs.config.settings import parse_bool
from pipeobs.errors import ConfigError

WORKERS_PER_CPU = 16
MEMORY_PER_WORKER = 64 * 1024**2


def check_worker_count(node_count: int, process_count_per_node: int) -> None:
    """Refuse more workers than this machine can run, saying the limit, why, and how to lift it."""
    import psutil

    total = node_count * process_count_per_node
    cpus = os.cpu_count() or 1
    available = psutil.virtual_memory().available
    limit = max(cpus, min(cpus * WORKERS_PER_CPU, available // MEMORY_PER_WORKER))
    if total <= limit or parse_bool(env.ALLOW_MANY_PROCESSES, env.first(env.ALLOW_MANY_PROCESSES) or "0"):
        return
    raise ConfigError(
        f"{total} worker processes (node_count {node_count} x process_count_per_node {process_count_per_node}) "
        f"are more than this machine can run: the limit is {limit} ({WORKERS_PER_CPU} per CPU on {cpus} CPUs, "
        f"and one per {MEMORY_PER_WORKER // 1024**2} MiB of the {available / 1024**3:.1f} GiB of available memory); "
        f"lower process_count_per_node (--process-count-per-node) or node_count, "
        f"or set {env.ALLOW_MANY_PROCESSES}=1 to start them anyway"
    )

"""What a job is before it runs (:class:`JobPlan`) and after (:class:`JobResult`)."""

from __future__ import annotations

import glob
import itertools
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeobs import env as variables
from pipeobs.config import ParallelRunConfig, Settings
from pipeobs.errors import ConfigError
from pipeobs.protocol import Setup
from pipeobs.record.rundir import RunDir

if TYPE_CHECKING:
    from pipeobs.alerts.rules import AlertSettings


def gpu_count() -> int:
    """GPUs per node for ``CUDA_VISIBLE_DEVICES`` assignment (Azure reads the same variable)."""
    value = variables.first(variables.GPU_COUNT, variables.AZURE_GPU_COUNT)
    return int(value) if value and value.isdigit() else 0


@dataclass
class JobPlan:
    """Everything the driver needs: validated config, inputs, and where things go."""

    config: ParallelRunConfig
    settings: Settings
    datasets: list[Any]
    step_name: str
    step_id: str
    run_dir: RunDir
    entry_script: str
    source_dir: str
    output_dir: str
    script_arguments: list[str] = field(default_factory=list)
    working_dir: str = field(default_factory=os.getcwd)
    gpu_count: int = field(default_factory=gpu_count)
    model_dir: str | None = None
    exporters: list[str] = field(default_factory=list)
    export_deadline: float = 10.0
    debug: DebugTarget | None = None  # not recorded: a resumed run debugs only when asked again
    alerts: AlertSettings | None = None  # None: the default alert rules
    metrics_address: tuple[str, int] | None = None  # --metrics-port; not recorded, as debug
    pushgateway: str | None = None  # --pushgateway; not recorded, as debug
    backend: str = "local"  # "local" | "ray" (recorded: a resumed run runs where it ran)
    ray_address: str | None = None  # --ray-address (None: RAY_ADDRESS, or a new local Ray instance)
    parent_step_id: str | None = None  # the pipeline run this step is a node of (v2 pipelines)
    parent_traceparent: str | None = None  # its span: the job span is a child of it

    @property
    def tabular(self) -> bool:
        return bool(self.datasets) and self.datasets[0].kind != "file"

    @property
    def mini_batch_size(self) -> int:
        return self.config.effective_mini_batch_size(self.tabular)

    @property
    def output_file(self) -> str | None:
        if self.config.output_action != "append_row":
            return None
        return os.path.join(self.output_dir, self.config.append_row_file_name or "parallel_run_step.txt")

    @property
    def worker_env(self) -> dict[str, str]:
        from pipeobs.mlflow_bridge import tracking_environment

        env = dict(self.config.environment_variables)
        env.update(tracking_environment(str(self.run_dir.path), env))  # MLflow's files go to the run dir
        env[variables.OUTPUT_PATH] = self.output_dir
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
        env.pop(variables.CUDA_DEVICES, None)
        if self.model_dir:
            env[variables.MODEL_DIR] = env[variables.AZURE_MODEL_DIR] = self.model_dir
        return env

    def paths_read_by_workers(self) -> list[str]:
        """What workers open where they run, absolute: the inputs (a glob: the folder it starts in), the
        entry script and its folder, the model folder."""
        paths = [path for d in self.datasets for path in d.to_dict().get("paths", [])]
        paths += [self.entry_script, self.source_dir, *([self.model_dir] if self.model_dir else [])]
        return [_fixed_part(os.path.join(self.working_dir, str(path))) for path in paths]

    def worker_setup(self, node: int, name: str, token: str, traceparent: str) -> Setup:
        """The setup message a worker receives after it connects (picklable)."""
        return Setup(
            token=token,
            traceparent=traceparent,
            entry_script=self.entry_script,
            source_dir=self.source_dir,
            script_arguments=list(self.script_arguments),
            output_action=self.config.output_action,
            partition_keys=self.config.partition_keys,
            profiling_module=self.settings.profiling_module,
            datasets=[d.to_dict() for d in self.datasets],
            scratch_dir=str(self.run_dir.scratch(node, name)),
            logging_level=self.config.logging_level,
            worker={
                "step_id": self.step_id,
                "step_name": self.step_name,
                "node": node,
                "name": name,
                "run_dir": str(self.run_dir.path),
                "output_dir": self.output_dir,
                "working_dir": self.working_dir,
                "logging_level": str(self.config.logging_level),
            },
        )

    def describe(self) -> str:
        cfg = self.config
        return (
            f"entry script {self.entry_script}, {len(self.datasets)} input(s), "
            f"{cfg.node_count} node(s) x {cfg.effective_process_count()} process(es), "
            f"mini_batch_size {self.mini_batch_size}, {cfg.output_action}"
        )

    def record(self) -> dict[str, Any]:
        """The row of the ``runs`` table: enough to resume the job."""
        return {
            "step_id": self.step_id,
            "step_name": self.step_name,
            "status": "Running",
            "entry_script": self.entry_script,
            "config": json.dumps(self.config.to_dict()),
            "settings": json.dumps(self.settings.to_dict()),
            "inputs": json.dumps(
                {
                    "datasets": [d.to_dict() for d in self.datasets],
                    "output_dir": self.output_dir,
                    "source_dir": self.source_dir,
                    "script_arguments": self.script_arguments,
                    "working_dir": self.working_dir,
                    "model_dir": self.model_dir,
                    "exporters": self.exporters,
                    "export_deadline": self.export_deadline,
                    "backend": self.backend,
                    "ray_address": self.ray_address,
                    "parent_step_id": self.parent_step_id,
                    "parent_traceparent": self.parent_traceparent,
                    "python": sys.executable,
                }
            ),
            "output_path": self.output_file,
            "kind": "step",
            "parent_step_id": self.parent_step_id,
        }


def _fixed_part(path: str) -> str:
    """``path`` up to its first glob character: what must exist for the glob to match anything."""
    parts = Path(os.path.normpath(path)).parts
    fixed = [p for p in itertools.takewhile(lambda p: not glob.has_magic(p), parts)]
    return str(Path(*fixed)) if fixed else os.sep


@dataclass(frozen=True)
class DebugTarget:
    """``pipeobs run --debug-mini-batch N [--debugpy [HOST:]PORT]``: the first attempt of mini-batch N
    that gets as far as calling ``run()`` waits for a debugger (debugpy) on ``host:port`` (port 0:
    any free one) and stops at run()'s first line; later attempts run as usual."""

    mini_batch_id: int
    host: str = "127.0.0.1"
    port: int = 0

    def check(self) -> None:
        """Fail before anything starts: a negative id, debugpy missing, or an address that cannot be listened on."""
        import importlib.util
        import socket

        if self.mini_batch_id < 0:
            raise ConfigError(f"--debug-mini-batch takes a mini-batch id (0 or more), not {self.mini_batch_id}")
        if importlib.util.find_spec("debugpy") is None:
            from pipeobs.debugger import DEBUGPY_MISSING, INSTALL_HINT

            raise ConfigError(f"{DEBUGPY_MISSING}: {INSTALL_HINT}")
        try:  # bound as debugpy binds its listener
            with socket.socket(socket.AF_INET6 if self.host.count(":") > 1 else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((self.host, self.port))
        except OSError as exc:
            raise ConfigError(f"cannot listen for a debugger on {self.host}:{self.port} ({exc.strerror or exc}): "
                              "choose another --debugpy [HOST:]PORT (port 0: any free one)") from None


@dataclass
class Thresholds:
    """The three failure thresholds of section 2.5 (None or -1/100: not checked)."""

    error_threshold: int = -1
    allowed_failed_count: int | None = None
    allowed_failed_percent: float | None = None

    @classmethod
    def from_config(cls, config: ParallelRunConfig) -> Thresholds:
        return cls(config.error_threshold, config.allowed_failed_count, config.allowed_failed_percent)

    def exceeded(self, failed_items: int, failed_batches: int, total_batches: int, all_scheduled: bool) -> str | None:
        """Azure's message for the first threshold exceeded, or None."""
        if self.error_threshold != -1 and failed_items > self.error_threshold:
            return f"The number of failed items is {failed_items}, which exceeds error threshold {self.error_threshold}."
        count = self.allowed_failed_count
        if count is not None and count != -1 and failed_batches > count:
            return (
                f"The number of failed mini batches is {failed_batches}, which exceeds allowed failed "
                f"count {count}."
            )
        percent = self.allowed_failed_percent
        # "The check starts after all mini batches have been scheduled."
        if percent is not None and all_scheduled and total_batches:
            actual = 100.0 * failed_batches / total_batches
            if actual > percent:
                return (
                    f"The percentage of failed mini batches is {actual:.2f}%, which exceeds allowed "
                    f"failed percent {percent}."
                )
        return None


@dataclass
class JobResult:
    """The outcome of ``ParallelRunStep.run()`` / ``pipeobs run``."""

    status: str  # "Completed" | "Failed" | "Interrupted"
    step_id: str
    step_name: str
    run_dir: str
    output_path: str | None
    output_dir: str
    mini_batches_total: int
    mini_batches_succeeded: int
    mini_batches_failed: int
    items_total: int
    items_succeeded: int
    items_failed: int
    duration_seconds: float
    reason: str | None = None
    first_error: dict[str, Any] | None = None
    retries: int = 0
    timeouts: int = 0
    worker_restarts: int = 0
    exports: dict[str, dict[str, int]] = field(default_factory=dict)
    interrupted_by: str | None = None  # "SIGINT" | "SIGTERM" when status is "Interrupted"
    reused_from: str | None = None  # the run whose outputs this one reused (no worker started)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # the alerts that fired (AlertEvaluator)
    lost_nodes: dict[int, str] = field(default_factory=dict)  # node -> why (--backend ray: a supervisor died)

    @property
    def ok(self) -> bool:
        return self.status == "Completed"

    @property
    def mini_batches_not_run(self) -> int:
        """Mini-batches the job stopped before finishing: neither succeeded nor failed."""
        return self.mini_batches_total - self.mini_batches_succeeded - self.mini_batches_failed

    @property
    def items_not_run(self) -> int:
        """Items of the mini-batches not run (a failed empty mini-batch counts one failed item, hence the floor)."""
        return max(0, self.items_total - self.items_succeeded - self.items_failed)

    def headline(self) -> str:
        """Azure's final summary line: the processed counts, so what was not run is total minus processed."""
        return (
            f"There are {self.mini_batches_total} mini batches with {self.items_total} items. "
            f"Processed {self.mini_batches_succeeded + self.mini_batches_failed} mini batches containing "
            f"{self.items_total - self.items_not_run} items, {self.items_succeeded} succeeded, "
            f"{self.items_failed} failed. Status: {self.status}."
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class ProgressView:
    """What a progress display needs of a running job (handed to ``on_progress`` callbacks)."""

    step_name: str
    done: int  # mini-batches finished (done or failed)
    total: int | None  # None while partitioning goes on
    started: float  # time.monotonic() at the start
    alerts: tuple[str, ...] = ()  # the names of the alerts firing now

"""``ParallelRunStep``: Azure's step API, run locally. ``.run()`` blocks and returns a result."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeobs.config import (
    ParallelRunConfig,
    Settings,
    check_step_name,
    check_v2_job_name,
    check_worker_count,
    make_settings,
    split_arguments,
)
from pipeobs.entry import check_entry_script
from pipeobs.environment import record_environment
from pipeobs.errors import ConfigError, RunDirError
from pipeobs.jobs import JobPlan, JobResult, ProgressView
from pipeobs.record.rundir import RunDir, new_step_id
from pipeobs.record.store import Store, step_ids_of

if TYPE_CHECKING:
    from pipeobs.alerts.rules import AlertSettings

ProgressCallback = Callable[[ProgressView], None]


class ParallelRunStep:
    """A ParallelRunStep with Azure's parameters; ``run()`` executes it on this machine.

    Differences from Azure, by choice: ``output`` may be omitted for ``append_row`` (the output
    then goes to ``<run dir>/output``), and ``name`` is checked against the documented rule
    (Azure's SDK does not check it).
    """

    def __init__(
        self,
        name: str,
        parallel_run_config: ParallelRunConfig,
        inputs: Sequence[Any],
        output: str | os.PathLike[str] | None = None,
        side_inputs: Sequence[Any] | None = None,
        arguments: Sequence[Any] | None = None,
        allow_reuse: bool = True,
        *,
        v2: bool = False,
    ) -> None:
        self.name = check_v2_job_name(name) if v2 else check_step_name(name)
        if not isinstance(parallel_run_config, ParallelRunConfig):
            raise ConfigError("Param parallel_run_config must be a azureml.pipeline.steps.ParallelRunConfig")
        self.config = parallel_run_config
        if isinstance(arguments, str):  # one string, as a shell would split it (never character by character)
            arguments = shell_words(arguments, "arguments")
        settings, self.script_arguments = split_arguments(list(arguments) if arguments else None)
        self.entry_script = _resolve_entry_script(parallel_run_config)
        self.inputs = _check_inputs(inputs)
        self.output = None if output is None else str(output)
        self.side_inputs = list(side_inputs or [])
        self.settings_values = settings
        self.settings = make_settings(settings)
        self.allow_reuse = allow_reuse
        self._listed = False  # run() listed the inputs for the plan it makes

    def plan(
        self,
        runs_dir: str | os.PathLike[str] = "runs",
        settings: Settings | None = None,
        model_dir: str | os.PathLike[str] | None = None,
        exporters: Sequence[str] = (),
        export_deadline: float = 10.0,
        *,
        metrics_address: tuple[str, int] | None = None,
        pushgateway: str | None = None,
        alerts: AlertSettings | None = None,
        backend: str = "local",
        ray_address: str | None = None,
        step_id: str | None = None,
        parent: tuple[str, str] | None = None,
    ) -> JobPlan:
        """Create the run directory and its store; the job is ready to run.

        ``step_id`` is chosen by the caller when it must know the run directory first (a v2 job's
        outputs live in it); ``parent`` is (pipeline step_id, its span's traceparent) for a pipeline node.
        """
        check_backend(backend)
        if not self._listed:  # called alone: the inputs are looked at anew (run() has just listed them)
            for dataset in self.inputs:
                dataset.relist()
        if exporters:  # fail on an unknown or unconfigured exporter before anything is created
            from pipeobs.export.routing import create_exporter

            for name in exporters:
                create_exporter(name).shutdown()
        if self.output and os.path.exists(self.output) and not os.path.isdir(self.output):
            raise ConfigError(
                f"output '{self.output}' is an existing file, not a folder: name a folder (it is created if missing)"
            )
        check_worker_count(1 if backend == "ray" else self.config.node_count, self.config.effective_process_count())
        step_id = step_id or new_step_id(self.name)
        run_dir = RunDir.create(runs_dir, self.name, step_id)
        output_dir = os.path.abspath(self.output) if self.output else str(run_dir.path / "output")
        plan = JobPlan(
            config=self.config,
            settings=settings or self.settings,
            datasets=self.inputs,
            step_name=self.name,
            step_id=step_id,
            run_dir=run_dir,
            entry_script=str(self.entry_script),
            source_dir=str(Path(self.config.source_directory or self.entry_script.parent).resolve()),
            output_dir=output_dir,
            script_arguments=self.script_arguments,
            model_dir=os.path.abspath(model_dir) if model_dir else None,
            exporters=list(exporters),
            export_deadline=export_deadline,
            metrics_address=metrics_address,
            pushgateway=pushgateway,
            alerts=alerts,
            backend=backend,
            ray_address=ray_address,
            parent_step_id=parent[0] if parent else None,
            parent_traceparent=parent[1] if parent else None,
        )

        store = Store(run_dir.store)
        store.insert_run({**plan.record(), "started_at": _now(), **this_driver()})
        store.close()
        record_environment(run_dir.path, self.config.environment_variables, self.inputs)
        return plan

    def run(
        self,
        runs_dir: str | os.PathLike[str] = "runs",
        on_progress: ProgressCallback | None = None,
        settings: Settings | None = None,
        model_dir: str | os.PathLike[str] | None = None,
        exporters: Sequence[str] = (),
        export_deadline: float = 10.0,
        *,
        metrics_address: tuple[str, int] | None = None,
        pushgateway: str | None = None,
        alerts: AlertSettings | None = None,
        backend: str = "local",
        ray_address: str | None = None,
        step_id: str | None = None,
        parent: tuple[str, str] | None = None,
    ) -> JobResult:
        """Run the step to the end (blocking) and return its result; a failed job is a result.

        ``model_dir`` is where ``Model.get_model_path(name)`` looks (``<model_dir>/<name>``).
        ``exporters`` names exporter plugins (``"appinsights"``, ``"otlp"``); what they cannot
        deliver within ``export_deadline`` seconds after the job is spooled to the run directory.
        ``metrics_address`` (host, port; port 0: any free one) serves the job's metrics to Prometheus
        while it runs; ``pushgateway`` (a URL) receives them when it ends. ``alerts`` says which alert
        rules the driver evaluates and where it sends their notifications (None: the default rules).
        ``backend="ray"`` runs the workers on a Ray cluster (``ray_address``; None: ``RAY_ADDRESS``,
        else a new local Ray instance), one node supervisor per node (:mod:`pipeobs.executors.ray_nodes`).

        With ``allow_reuse``, an earlier completed run of this step under ``runs_dir`` with the same
        fingerprint (:mod:`pipeobs.fingerprint`) is reused (see :mod:`pipeobs.reuse`): the result is
        its result, in a run directory of its own, and no worker starts. One line on stdout says,
        before anything runs, whether the run is reused or why it runs.
        """
        from pipeobs import reuse
        from pipeobs.explorer.terminal import printable
        from pipeobs.fingerprint import take_fingerprint

        settings = settings or self.settings
        for dataset in self.inputs:  # a new run looks at the inputs anew (once: fingerprint, plan and partition)
            dataset.relist()
        fingerprint = take_fingerprint(self, runs_dir, settings, model_dir)
        decision = reuse.decide(fingerprint, self.name, runs_dir, self.allow_reuse)
        print(printable(decision.text()), flush=True)
        self._listed = True
        try:
            plan = self.plan(runs_dir, settings, model_dir, exporters, export_deadline, metrics_address=metrics_address,
                             pushgateway=pushgateway, alerts=alerts, backend=backend, ray_address=ray_address,
                             step_id=step_id, parent=parent)
        finally:
            self._listed = False
        reuse.record(plan, fingerprint, decision)
        if decision.reused_from:
            return reuse.complete_reused(plan, decision)
        return run_plan(plan, on_progress)


def run_plan(plan: JobPlan, on_progress: ProgressCallback | None = None) -> JobResult:
    from pipeobs.driver import Driver

    executor = create_executor(plan)
    try:
        return Driver(plan, on_progress, executor=executor).run()
    finally:
        if executor is not None:  # also when the driver could not start (its actors and placement go)
            executor.close()


BACKENDS = ("local", "ray")


def check_backend(backend: str) -> None:
    """A known backend whose dependencies are installed (before anything is created)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}': use one of {', '.join(BACKENDS)}")
    if backend == "ray":
        from pipeobs.executors.ray_nodes import import_ray

        import_ray()


def create_executor(plan: JobPlan) -> Any:
    """Where the plan's workers run: this machine (None: the driver's default), or a Ray cluster.

    The Ray executor connects, places one supervisor per node and checks that every node sees the
    inputs before the run starts; if it cannot, the run is marked Failed with the reason.
    """
    if plan.backend != "ray":
        return None
    from pipeobs.executors.ray_nodes import RayExecutor

    try:
        executor = RayExecutor(plan.ray_address, plan.config.node_count, plan.paths_read_by_workers(),
                               plan.settings.resource_monitor_interval)
    except BaseException as exc:  # the run never started: Failed with the reason (Interrupted on Ctrl-C)
        store = Store(plan.run_dir.store)
        interrupted = isinstance(exc, KeyboardInterrupt)
        store.update_run(status="Interrupted" if interrupted else "Failed", ended_at=_now(),
                         error="interrupted while connecting to Ray" if interrupted else str(exc))
        store.flush()
        store.close()
        raise
    if not plan.gpu_count:
        plan.gpu_count = executor.gpus_per_node
    return executor


def resume_plan(path: str | os.PathLike[str]) -> JobPlan:
    """Rebuild the plan of an interrupted run from its store (``pipeobs run --resume``)."""
    run_dir = RunDir.existing(path)
    row = _recorded_run(run_dir)
    if row is None:
        raise RunDirError(f"run directory '{path}' has no recorded run to resume")
    if row["status"] == "Completed":
        raise RunDirError(f"run {row['step_id']} already completed; there is nothing to resume")
    plan = recorded_plan(row, run_dir)
    check_backend(plan.backend)
    check_worker_count(1 if plan.backend == "ray" else plan.config.node_count, plan.config.effective_process_count())
    return plan


def recorded_plan(row: sqlite3.Row, run_dir: RunDir) -> JobPlan:
    """The plan a ``runs`` row records (:meth:`JobPlan.record`), in ``run_dir`` (``--resume``, ``pipeobs replay``)."""
    from pipeobs.datasets import Dataset

    inputs = json.loads(row["inputs"])
    return JobPlan(
        config=ParallelRunConfig.from_dict(json.loads(row["config"])),
        settings=make_settings(json.loads(row["settings"])),
        datasets=[Dataset.from_dict(d) for d in inputs["datasets"]],
        step_name=row["step_name"],
        step_id=row["step_id"],
        run_dir=run_dir,
        entry_script=row["entry_script"],
        source_dir=inputs["source_dir"],
        output_dir=inputs["output_dir"],
        script_arguments=inputs["script_arguments"],
        working_dir=inputs["working_dir"],
        model_dir=inputs.get("model_dir"),
        exporters=inputs.get("exporters") or [],
        export_deadline=inputs.get("export_deadline") or 10.0,
        backend=inputs.get("backend") or "local",
        ray_address=inputs.get("ray_address"),
        parent_step_id=inputs.get("parent_step_id"),
        parent_traceparent=inputs.get("parent_traceparent"),
    )


def _recorded_run(run_dir: RunDir) -> sqlite3.Row | None:
    """The run row of a run directory's store; a file that is no pipeobs store is refused untouched."""
    try:
        step_ids_of(run_dir.store)  # read-only first: never add pipeobs tables to somebody else's database
        store = Store(run_dir.store)
        try:
            return store.run_row()
        finally:
            store.close()
    except sqlite3.DatabaseError as exc:
        raise RunDirError(
            f"cannot resume: '{run_dir.store}' is damaged or not a pipeobs store ({exc}); "
            "start the run again without --resume"
        ) from None


def _check_inputs(inputs: Sequence[Any]) -> list[Any]:
    from pipeobs.datasets import Dataset

    if not isinstance(inputs, list | tuple) or not inputs:
        raise ConfigError(
            "The parameter 'inputs' must be a list and have at least one element or "
            "rank_mini_batch_count must be greater than zero."
        )
    for item in inputs:
        if not isinstance(item, Dataset):
            raise ConfigError(
                "Step input must be of any type: FileDataset, TabularDataset "
                f"(pipeobs.FileDataset.from_files(...), pipeobs.TabularDataset...), found {type(item).__name__}"
            )
    if len({d.kind == "file" for d in inputs}) > 1:
        raise ConfigError("All inputs of step must be same type")
    for dataset in inputs:
        dataset.check_exists()  # listed (and checked readable) when the step runs
    return list(inputs)


def shell_words(text: str, name: str) -> list[str]:
    """``text`` split as a shell would, or a one-line error naming ``name``."""
    import shlex

    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"{name} '{text}' cannot be split as a shell would ({exc}): check the quotes") from None


def _resolve_entry_script(config: ParallelRunConfig) -> Path:
    source = config.source_directory
    if source is not None:
        root = Path(source)
        if not root.exists():
            raise ConfigError(f"The value '{source}' specified in source_directory doesn't exist.")
        if not root.is_dir():
            raise ConfigError(f"The value '{source}' specified in source_directory is not a directory.")
        script = root / config.entry_script
        if not script.exists():
            raise ConfigError(f"The value '{config.entry_script}' specified in entry_script doesn't exist.")
        if not script.is_file():
            raise ConfigError(f"The value '{config.entry_script}' specified in entry_script is not a file.")
    else:
        script = Path(config.entry_script)
    return check_entry_script(script)


def this_driver() -> dict[str, Any]:
    from pipeobs.record.liveness import this_driver

    return this_driver()


def _now() -> float:
    import time

    return time.time()

"""Azure ML v2 job YAML run locally: ``type: parallel``, ``type: command`` and ``type: pipeline``.

``pipeobs run -c job.yml`` reads a v2 YAML as Azure writes it (:func:`is_v2_document` tells it from
pipeobs's own flat job YAML) and runs it here: a parallel job as a ParallelRunStep, a command job as a
shell command in its code folder, a pipeline as its nodes in dependency order, each node a step with
its own run directory under the pipeline's.

The submodules are the layout:

* :mod:`~pipeobs.v2.document`: reading the YAML, ``--set`` overrides, component references.
* :mod:`~pipeobs.v2.expressions`: ``${{...}}`` and ``$[[...]]``.
* :mod:`~pipeobs.v2.schema`: the keys each job type accepts, and its inputs and outputs.
* :mod:`~pipeobs.v2.locations`: local paths, ``azureml://datastores/...`` and ``azureml:`` assets.
* :mod:`~pipeobs.v2.parallel`: a parallel job or node as a :class:`~pipeobs.step.ParallelRunStep`.
* :mod:`~pipeobs.v2.command`: a command job or node, run and recorded.
* :mod:`~pipeobs.v2.run`: running a job YAML, and one parallel or command job of it.
* :mod:`~pipeobs.v2.pipeline`: the pipeline: order, bindings, its run and its span.
"""

from __future__ import annotations

from typing import Any

V2_TYPES = ("parallel", "command", "pipeline")


def is_v2_document(data: Any) -> bool:
    """Whether a job YAML is Azure ML v2 (a ``type``, ``$schema``, ``jobs``, ``task``, ``component`` or
    ``command`` key: Azure's type defaults to command) rather than pipeobs's flat job YAML."""
    return isinstance(data, dict) and any(key in data for key in ("type", "$schema", "jobs", "task", "component",
                                                                  "command"))

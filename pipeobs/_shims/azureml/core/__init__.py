"""``from azureml.core import Run, Model, Dataset`` inside pipeobs workers when azureml-core is absent.

``azureml`` is left a namespace package (no ``__init__.py``) and this folder is appended to
``sys.path``, so a real azureml-core installation is always found first.
"""

from pipeobs.azureml import Dataset, Model, Run

__all__ = ["Dataset", "Model", "Run"]

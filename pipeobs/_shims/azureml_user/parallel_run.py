"""``from azureml_user.parallel_run import EntryScript`` inside pipeobs workers."""

from pipeobs.entry import EntryScript

__all__ = ["EntryScript"]

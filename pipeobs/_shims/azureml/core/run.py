from pipeobs.azureml import Run

__all__ = ["Run"]

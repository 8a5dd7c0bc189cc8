from pipeobs.azureml import Dataset

__all__ = ["Dataset"]

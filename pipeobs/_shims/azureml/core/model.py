from pipeobs.azureml import Model

__all__ = ["Model"]

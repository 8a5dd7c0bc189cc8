"""The one line a missing optional dependency of the collector fails with."""

INSTALL_HINT = "pipeobs collect needs: pip install 'pipeobs[collector]'"

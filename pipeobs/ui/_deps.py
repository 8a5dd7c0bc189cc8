"""The one line a missing optional dependency of the web explorer fails with."""

INSTALL_HINT = "pipeobs ui needs: pip install 'pipeobs[ui]'"

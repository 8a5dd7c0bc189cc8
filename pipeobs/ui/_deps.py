"""What the web explorer's entry points need before its dependencies load: the install hint, the defaults."""

INSTALL_HINT = "pipeobs ui needs: pip install 'pipeobs[ui]'"
PERFETTO_URL = "https://ui.perfetto.dev"  # where "Open in Perfetto" hands traces (pipeobs ui --perfetto-url)

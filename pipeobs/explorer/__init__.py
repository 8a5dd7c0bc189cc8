"""The explorer: read a run's store (live or finished) and show it.

* :mod:`pipeobs.explorer.runs`: find run directories, open their stores read-only.
* :mod:`pipeobs.explorer.queries`: pure functions over a read-only connection, returning plain
  dicts and lists (what ``--json`` prints); :mod:`pipeobs.explorer.spans`: the span tree.
* :mod:`pipeobs.explorer.chrome`: the Chrome Trace Event export (ui.perfetto.dev, chrome://tracing).
* :mod:`pipeobs.explorer.commands`: the ``pipeobs runs|show|logs|trace|metrics|export`` commands,
  drawn by :mod:`pipeobs.explorer.render` (rich, imported only when a command prints).
* :mod:`pipeobs.explorer.terminal`: the one escaping of user text for a terminal, used by every
  view (and by ``pipeobs run``'s progress and summary).
"""

"""The run directory: driver log, per-process logs, the SQLite store and ledger."""

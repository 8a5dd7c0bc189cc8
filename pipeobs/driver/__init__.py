"""The head driver, in parts with seams (see the README's architecture section).

* :mod:`~pipeobs.driver.core`: :class:`Driver`, the loop tying the parts together;
* :mod:`~pipeobs.driver.ledger`: mini-batch states, the pending queue, verdicts, thresholds;
* :mod:`~pipeobs.driver.clocks`: kill and stop decisions as functions of (state, now);
* :mod:`~pipeobs.driver.slots`: the driver's view of each worker process, and their names;
* :mod:`~pipeobs.driver.output`: the append_row output file (exactly-once);
* :mod:`~pipeobs.driver.journal`: everything written about the run (pipeline, store, files).

Worker processes live behind an executor (:mod:`pipeobs.executors`), messages follow
:mod:`pipeobs.protocol`.
"""

from pipeobs.driver.core import Driver

__all__ = ["Driver"]

"""Preemption: SIGUSR1/SIGTERM/SIGINT ask the run to checkpoint and stop.

A cluster (SLURM ``--signal=USR1@120``, or SIGTERM at the time limit) warns a job before
killing it. The handler only sets a flag: nothing unsafe happens inside a signal handler.
One process stops after the step in progress; several all-reduce the flag at log steps
(aeatrain/training/step.py, ``agreed_stop``) so all ranks agree on the same step. The
trainer saves a checkpoint there and exits with :data:`EXIT_PREEMPTED`, on which the SLURM
launcher requeues the job; the requeued job resumes from that checkpoint. The loader's
workers are threads (aeatrain/data/loader.py): Python delivers signals to the main thread
only, so the handler here is the one that acts. SIGINT (Ctrl-C) stops the same way; a second
SIGINT gives up on the checkpoint and interrupts at once.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL of sysexits.h: "try again later", i.e. requeue me
PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class PreemptionFlag:
    """Set by the first preemption signal; read by the trainer at step boundaries."""

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def install(self) -> None:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

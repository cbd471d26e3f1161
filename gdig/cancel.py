"""The stop a job is asked for: its own module, so that the storage layer (a cancel file in the run, gdig.rundir.status)
and the process layer (a peer that stopped, gdig.engine.distributed) both know it without leaning on each other."""


class Cancelled(RuntimeError):
    """Raised between batches when a job is asked to stop (a `cancel` file in its run, Ctrl-C, a stopped peer)."""

"""Memory and time of a run before it starts: the plan and the probe."""

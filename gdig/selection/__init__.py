"""Pure functions of a run's matrices: the quality rule, signals beside influence, clusters, duplicates."""

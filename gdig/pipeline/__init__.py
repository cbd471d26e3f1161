"""The stages of a run, and the jobs built on runs (rescoring, queries, fine-tunes, evaluations)."""

"""The run directory (DESIGN section 3), the contract between the core, the app, the CLI and the checks: every
file name, and every read and write of a run's files, lives in this package. Torch-free: listing runs and
following a job must not load torch.

    layout    file names, preparing a folder, the config record
    status    progress, cancel, ETA (status.json)
    chunks    resumable score chunks (partial/)
    seeds     preconditioned seed gradients (safetensors)
    tables    candidates.parquet and seeds.parquet, the final arrays
    results   reading a finished run (RunResults)
    curation  the curator's overrides and settings saved in the run
"""

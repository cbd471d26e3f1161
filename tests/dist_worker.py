"""`gdig` as torchrun runs it, with one fault injected for the distributed tests: GDIG_TEST_FAULT=ACTION:RANK:STAGE
makes rank RANK, in STAGE (score: after writing its first chunk; fit: after its first fit batch; group: after
its first module group's chunk), `kill` itself
(SIGKILL, as the OOM killer would), `raise` a RuntimeError, or `cancel` the job (as the app's Cancel button).
GDIG_TEST_GROUPS=FILE records which module groups each rank works on."""

from __future__ import annotations

import os
import signal
import sys


def _fault() -> None:
    action, rank, stage = os.environ["GDIG_TEST_FAULT"].split(":")
    if os.environ.get("RANK", "0") != rank:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "cancel":
        out = sys.argv[sys.argv.index("--out") + 1]
        open(os.path.join(out, "cancel"), "w").close()
        return
    raise RuntimeError(f"injected failure on rank {rank} in {stage}")


def _record_groups() -> None:
    """GDIG_TEST_GROUPS=FILE: each module group a rank fits (or reads) its factors for, a JSON line in FILE."""
    import json

    import gdig.pipeline.partitions as partitions

    group_curvature = partitions._group_curvature

    def recorded(ctx, run_dir, part, *args, **kwargs):
        with open(os.environ["GDIG_TEST_GROUPS"], "a") as f:
            f.write(json.dumps({"rank": int(os.environ.get("RANK", "0")), "group": int(part.split("-")[-1])}) + "\n")
        return group_curvature(ctx, run_dir, part, *args, **kwargs)

    partitions._group_curvature = recorded


def _install() -> None:
    if "GDIG_TEST_GROUPS" in os.environ:
        _record_groups()
    if "GDIG_TEST_FAULT" not in os.environ:
        return
    import gdig.pipeline.stages as stages
    from gdig.engine.curvature_fit import CovarianceFitter

    stage = os.environ["GDIG_TEST_FAULT"].split(":")[2]
    if stage == "score":
        write_chunk = stages.write_chunk

        def faulty_write_chunk(*args, **kwargs):
            write_chunk(*args, **kwargs)
            _fault()

        stages.write_chunk = faulty_write_chunk
    elif stage == "fit":
        update = CovarianceFitter.update

        def faulty_update(self, cap):
            update(self, cap)
            _fault()

        CovarianceFitter.update = faulty_update
    elif stage == "group":  # a module group's sums (--module-partitions), before the last group
        from gdig.pipeline.partitions import PartSums

        save = PartSums.save

        def faulty_save(self, *args, **kwargs):
            save(self, *args, **kwargs)
            _fault()

        PartSums.save = faulty_save


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    _install()
    from gdig.__main__ import main

    sys.exit(main(sys.argv[1:]))

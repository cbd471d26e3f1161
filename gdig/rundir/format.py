"""The version of a run directory's format, and the one function that reads every earlier format as the current one.

Format 1 (no `format` key in config.json): the lambda of each module was saved as the top-level `damping` and the
rank the seeds were kept at as `seed_rank`, the same names as two settings that mean something else (the absolute
damping asked for, the rank asked for). Format 2 names them `module_damping` and `seed_rank_kept`.
"""

from __future__ import annotations

from typing import Any

FORMAT = 2
RENAMED_IN_2 = {"damping": "module_damping", "seed_rank": "seed_rank_kept"}


class NewerFormatError(ValueError):
    """A run written by a newer gdig than this one."""


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """config.json of any format as the current one, in memory (the file is left as it was written)."""
    version = int(record.get("format", 1))
    if version > FORMAT:
        raise NewerFormatError(
            f"this run was written in format {version} by a newer gdig; this one reads formats 1 to {FORMAT} "
            "(pip install -U gdig-studio)"
        )
    out = dict(record)
    if version < 2:
        for old, new in RENAMED_IN_2.items():
            if old in out:
                out[new] = out.pop(old)
    out["format"] = FORMAT
    return out

"""The tables of a finished run: candidates.parquet and seeds.parquet (id, loss, n_tokens, the input fields)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gdig.atomic import atomic_path
from gdig.rundir.layout import CANDIDATES, SEEDS

if TYPE_CHECKING:
    import pyarrow as pa

    from gdig.inputs.data import Dataset, TokenizedExample


def records_table(ds: Dataset, tok: list[TokenizedExample], columns: dict[str, np.ndarray]) -> pa.Table:
    """One row per example: id, the given score columns, token counts, prompt, target, the original record as
    JSON, and the input fields as columns where Arrow can type them."""
    import pyarrow as pa

    base = {"id": [e.id for e in ds.examples]} | {k: v for k, v in columns.items()}
    base |= {
        "n_input_tokens": np.array([len(t.input_ids) for t in tok], np.int64),
        "truncated": np.array([t.truncated for t in tok]),
        "prompt": [e.prompt for e in ds.examples],
        "target": [e.target for e in ds.examples],
        "record": [json.dumps(e.record, ensure_ascii=False, default=str) for e in ds.examples],
    }
    table = pa.table(base)
    fields = [k for k in dict.fromkeys(k for e in ds.examples for k in e.record) if k not in base]
    try:  # the input fields as columns, where Arrow can type them; `record` keeps every record exactly
        extra = pa.Table.from_pylist([{k: e.record.get(k) for k in fields} for e in ds.examples])
        for name in extra.column_names:
            table = table.append_column(name, extra.column(name))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        pass
    return table


def write_tables(run_dir: Path, candidates: pa.Table, seeds: pa.Table) -> None:
    """candidates.parquet and seeds.parquet, each written atomically."""
    import pyarrow.parquet as pq

    for name, table in ((CANDIDATES, candidates), (SEEDS, seeds)):
        with atomic_path(run_dir / name) as tmp:
            pq.write_table(table, tmp)

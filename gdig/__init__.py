"""G-DIG Studio: choose instruction-tuning data by its measured influence on a model (Pan et al., ACL 2024).

The Python API, the same steps as the command line:

    from gdig import ScoreConfig, SelectionConfig, export_selection, load_run, score, select_run

    run_dir = score(ScoreConfig(model="models/pool-ft", candidates="pool.jsonl", seeds="seeds.jsonl",
                                out="runs/pool"))
    run = load_run(run_dir)
    rule = SelectionConfig(clusters=20, budget=5000)  # mean influence >= 0, then 20 gradient clusters
    export_selection(run, select_run(run, rule), rule, "selected.jsonl")  # and selected.json, its manifest

New seed sets and questions from the run's gradient index, without another pass over the pool:

    rescore(run_dir, "runs/pool-other-seeds", SeedEdit(add=read_seed_file(run, "other.jsonl"), replace=True))
    (answer,) = ask(run, load_index(run_dir), RunModel(run_dir), [pair_example(run, "Hallo Welt", "Hello world")])

Two selections side by side, and the same LoRA fine-tune on each, judged on a test set:

    compare_selections(run, ["default", "random"], budget=5000).regions
    evaluate(EvaluationConfig(model="base", selections=["a.jsonl", "b.jsonl"], test="test.jsonl", out="ev"))

Names are imported on first use, so `import gdig` stays light (no torch until a model is needed).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {
    "DataConfig": "gdig.config",
    "ScoreConfig": "gdig.config",
    "score": "gdig.pipeline.run",
    "FinetuneConfig": "gdig.pipeline.finetuning",
    "finetune": "gdig.pipeline.finetuning",
    "load_run": "gdig.rundir.results",
    "SelectionConfig": "gdig.selection.select",
    "select_run": "gdig.selection.select",
    "export_selection": "gdig.outputs.export",
    "compare_selections": "gdig.outputs.compare",
    "EvaluationConfig": "gdig.pipeline.evaluation",
    "evaluate": "gdig.pipeline.evaluation",
    "rescore": "gdig.pipeline.rescoring",
    "SeedEdit": "gdig.pipeline.rescoring",
    "read_seed_file": "gdig.pipeline.rescoring",
    "ask": "gdig.pipeline.query",
    "pair_example": "gdig.pipeline.query",
    "RunModel": "gdig.pipeline.index_run",
    "build_index": "gdig.pipeline.index_run",
    "load_index": "gdig.rundir.index",
    "DemoConfig": "gdig.demo",
    "build_demo": "gdig.demo",
}
__all__ = [*_WHERE, "__version__"]


def __getattr__(name: str) -> Any:
    """The public names, each from the module that owns it."""
    if name not in _WHERE:
        raise AttributeError(f"module 'gdig' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)

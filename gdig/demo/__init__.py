"""The built-in demo, offline: a CLDR-based English-German corpus with labelled corruptions, a tokenizer and a
small Llama trained on it, a finished G-DIG run and its measured figures (held-out chrF, detection AUROC).

    build     DemoConfig, build_demo: the whole demo, cached
    corpus    the corpus and its corruptions
    tiny      tokenizers and models built from configs (also the tests' models)
    evaluate  chrF/BLEU of a model, AUROC of a score
"""

from gdig.demo.build import REPORT, DemoConfig, build_demo

__all__ = ["REPORT", "DemoConfig", "build_demo"]

"""The built-in demo, offline: a CLDR-based English-German corpus with labelled corruptions, a tokenizer and a
small Llama trained on it, a finished G-DIG run and its measured figures (held-out chrF, detection AUROC). The
pretrained demo: the same corpus German-to-English, SmolLM2 fine-tuned with LoRA, scored over its adapters.

    build     DemoConfig, build_demo: the whole demo, cached
    corpus    the corpus and its corruptions
    tiny      tokenizers and models built from configs (also the tests' models)
    evaluate  chrF/BLEU of a model, AUROC of a score
"""

from gdig.demo.build import REPORT, DemoConfig, build_demo, pretrained_base

__all__ = ["REPORT", "DemoConfig", "build_demo", "pretrained_base"]

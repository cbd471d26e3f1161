"""Read candidate and seed files, validate them, build prompts and tokenise with the prompt masked out.

Every error names the file, the line or row, and the field, so a curator can fix the input without guessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdig.config import DEFAULT_PROMPT
from gdig.inputs.readers import TEXT_PAIR_SEPARATOR, DataError, file_fingerprint, iter_records, language_name

IGNORE_INDEX = -100


@dataclass
class Example:
    """One instruction example: the prompt, the target the loss is taken on, and the original record."""

    id: str
    prompt: str
    target: str
    record: dict[str, Any]
    schema: str


@dataclass
class Dataset:
    """The examples of one input file, in file order, with the file's fingerprint."""

    path: str
    schema: str
    examples: list[Example]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def ids(self) -> list[str]:
        """Example ids in file order."""
        return [e.id for e in self.examples]


@dataclass
class TokenizedExample:
    """Token ids and labels of one example (prompt positions labelled IGNORE_INDEX)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def n_target_tokens(self) -> int:
        """Labelled (target) positions: what the loss averages over."""
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class TokenizationReport:
    """Counts that must be shown to the user rather than hidden (truncation is never silent)."""

    n_examples: int = 0
    n_truncated: int = 0
    n_without_target: int = 0
    truncated_ids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the curator: counts, lengths and how many were truncated."""
        msg = f"{self.n_truncated} of {self.n_examples} examples truncated to max length"
        if self.n_without_target:
            msg += f"; {self.n_without_target} lost every target token (loss and influence 0)"
        return msg


# ---------------------------------------------------------------------------------------------------------------
# Reading records


def detect_schema(record: dict[str, Any]) -> str | None:
    """translation, instruction or chat, from the fields a record has (None when none fits)."""
    if "messages" in record:
        return "chat"
    if "src_text" in record or "trg_text" in record:
        return "translation"
    if "instruction" in record or "output" in record:
        return "instruction"
    return None


def _text_field(path, line, record, name, required=True) -> str | None:
    value = record.get(name)
    if value is None:
        if required:
            raise DataError(path, "missing", line=line, field_name=name)
        return None
    if not isinstance(value, str):
        raise DataError(path, f"must be text, got {type(value).__name__}", line=line, field_name=name)
    return value


def _build_translation(path, line, rec, cfg_template, src_lang, trg_lang) -> tuple[str, str]:
    src = _text_field(path, line, rec, "src_text")
    tgt = _text_field(path, line, rec, "trg_text")
    lang = language_name(_text_field(path, line, rec, "trg_lang", required=False) or trg_lang)
    if not src.strip():
        raise DataError(path, "empty source text", line=line, field_name="src_text")
    if not tgt.strip():
        raise DataError(path, "empty target", line=line, field_name="trg_text")
    if lang is None and "{trg_lang}" in cfg_template:
        raise DataError(
            path, "missing, and no default target language was given (--trg-lang)", line=line, field_name="trg_lang"
        )
    slang = language_name(_text_field(path, line, rec, "src_lang", required=False) or src_lang)
    fields = {"src_text": src, "trg_lang": lang or "", "src_lang": slang or ""}
    try:
        prompt = cfg_template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"prompt template: bad placeholder {e}; use {{src_text}}, {{src_lang}}, {{trg_lang}}"
        ) from None
    return prompt, tgt


def _build_instruction(path, line, rec) -> tuple[str, str]:
    instruction = _text_field(path, line, rec, "instruction")
    inp = _text_field(path, line, rec, "input", required=False) or ""
    out = _text_field(path, line, rec, "output")
    if not out.strip():
        raise DataError(path, "empty target", line=line, field_name="output")
    prompt = instruction + ("\n\n" + inp if inp.strip() else "") + "\n\n"
    return prompt, out


def _build_chat(path, line, rec) -> tuple[str, str]:
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise DataError(path, "must be a non-empty list of {role, content}", line=line, field_name="messages")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(path, f"item {j} must have text 'role' and 'content'", line=line, field_name="messages")
    if msgs[-1]["role"] != "assistant":
        raise DataError(path, "the last message must be the assistant's (the target)", line=line, field_name="messages")
    if not msgs[-1]["content"].strip():
        raise DataError(path, "empty target (last assistant message)", line=line, field_name="messages")
    prompt = "".join(f"{m['role']}: {m['content']}\n" for m in msgs[:-1]) + "assistant: "
    return prompt, msgs[-1]["content"]


def load_dataset(
    path: str | Path,
    prompt_template: str = DEFAULT_PROMPT,
    src_lang: str | None = None,
    trg_lang: str | None = None,
    role: str = "data",
) -> Dataset:
    """Read and validate a file into Examples with stable ids. `role` names the set in errors (seeds, pool)."""
    examples: list[Example] = []
    schema: str | None = None
    first_path = str(path).split(TEXT_PAIR_SEPARATOR)[-1] if not Path(path).exists() else path
    for line, rec in iter_records(path, src_lang, trg_lang):
        ex = build_example(first_path, line, rec, prompt_template, src_lang, trg_lang, schema)
        schema = ex.schema
        ex.id = str(len(examples))
        examples.append(ex)
    if not examples:
        raise DataError(first_path, f"the {role} set is empty")
    _assign_ids(first_path, examples)
    return Dataset(path=str(path), schema=schema or "", examples=examples, fingerprint=file_fingerprint(path))


def build_example(
    path,
    line: int | None,
    rec: Any,
    prompt_template: str = DEFAULT_PROMPT,
    src_lang: str | None = None,
    trg_lang: str | None = None,
    schema: str | None = None,
) -> Example:
    """One record as an Example (id "0"); `schema`: the one the rest of its file has (another is refused)."""
    if not isinstance(rec, dict):
        raise DataError(path, f"each record must be an object, got {type(rec).__name__}", line=line)
    rec_schema = detect_schema(rec)
    if rec_schema is None:
        raise DataError(
            path,
            f"unknown schema (fields: {', '.join(sorted(rec)) or 'none'}); expected "
            "src_text/trg_text, instruction/input/output, or messages",
            line=line,
        )
    if schema is not None and rec_schema != schema:
        raise DataError(path, f"schema '{rec_schema}' differs from the file's '{schema}'", line=line)
    if rec_schema == "translation":
        prompt, target = _build_translation(path, line, rec, prompt_template, src_lang, trg_lang)
    elif rec_schema == "instruction":
        prompt, target = _build_instruction(path, line, rec)
    else:
        prompt, target = _build_chat(path, line, rec)
    return Example(id="0", prompt=prompt, target=target, record=rec, schema=rec_schema)


def _assign_ids(path, examples: Sequence[Example]) -> None:
    """Use the file's own `id` field when present on every record and unique, else the 0-based row number."""
    own = [e.record.get("id") for e in examples]
    if all(v is None for v in own):
        return
    if any(v is None for v in own):
        missing = next(i for i, v in enumerate(own) if v is None)
        raise DataError(path, "missing on some records (all or none must have one)", line=missing, field_name="id")
    seen: dict[str, int] = {}
    for i, v in enumerate(own):
        key = str(v)
        if key in seen:
            raise DataError(path, f"duplicate id {key!r} (records {seen[key]} and {i}, 0-based)", field_name="id")
        seen[key] = i
    for e, v in zip(examples, own, strict=True):
        e.id = str(v)


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation


def tokenize_example(tokenizer, example: Example, max_length: int) -> TokenizedExample:
    """DESIGN section 2: tok(prompt) + tok(target, no specials) + [eos]; labels -100 over the prompt."""
    prompt_ids = list(tokenizer(example.prompt).input_ids)
    target_ids = list(tokenizer(example.target, add_special_tokens=False).input_ids)
    if tokenizer.eos_token_id is not None:
        target_ids.append(tokenizer.eos_token_id)
    ids = prompt_ids + target_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids
    truncated = len(ids) > max_length
    return TokenizedExample(ids[:max_length], labels[:max_length], truncated)


def tokenize_dataset(tokenizer, dataset: Dataset, max_length: int) -> tuple[list[TokenizedExample], TokenizationReport]:
    """Every example tokenized, with a report of lengths and truncation."""
    report = TokenizationReport(n_examples=len(dataset))
    out = []
    for ex in dataset.examples:
        t = tokenize_example(tokenizer, ex, max_length)
        if t.truncated:
            report.n_truncated += 1
            if len(report.truncated_ids) < 20:
                report.truncated_ids.append(ex.id)
        if t.n_target_tokens == 0:
            report.n_without_target += 1
        out.append(t)
    return out, report

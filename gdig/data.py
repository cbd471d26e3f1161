"""Read candidate and seed files, validate them, build prompts and tokenise with the prompt masked out.

Every error names the file, the line or row, and the field, so a curator can fix the input without guessing.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdig.config import DEFAULT_PROMPT

IGNORE_INDEX = -100
TEXT_PAIR_SEPARATOR = ","  # "src.txt,tgt.txt" names two line-aligned plain-text files

# Language codes found in file names and fields, mapped to the names the prompt uses.
LANGUAGE_NAMES = {
    "en": "English",
    "eng": "English",
    "eng_latn": "English",
    "de": "German",
    "deu": "German",
    "ger": "German",
    "deu_latn": "German",
    "zh": "Chinese",
    "zho": "Chinese",
    "cmn": "Chinese",
    "zho_hans": "Chinese",
    "cmn_hans": "Chinese",
    "fr": "French",
    "fra": "French",
    "fra_latn": "French",
    "es": "Spanish",
    "spa": "Spanish",
    "spa_latn": "Spanish",
    "ja": "Japanese",
    "jpn": "Japanese",
    "jpn_jpan": "Japanese",
    "ru": "Russian",
    "rus": "Russian",
    "rus_cyrl": "Russian",
    "cs": "Czech",
    "ces": "Czech",
    "ces_latn": "Czech",
}


class DataError(ValueError):
    """Bad input, with its location: `file:line: field: problem`."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None, field_name: str | None = None):
        where = str(path) + (f":{line}" if line is not None else "")
        what = f"field '{field_name}': " if field_name else ""
        super().__init__(f"{where}: {what}{problem}")
        self.path, self.line, self.field, self.problem = str(path), line, field_name, problem


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
    path: str
    schema: str
    examples: list[Example]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.examples]


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def n_target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class TokenizationReport:
    """Counts that must be shown to the user rather than hidden (truncation is never silent)."""

    n_examples: int = 0
    n_truncated: int = 0
    n_without_target: int = 0
    truncated_ids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        msg = f"{self.n_truncated} of {self.n_examples} examples truncated to max length"
        if self.n_without_target:
            msg += f"; {self.n_without_target} lost every target token (loss and influence 0)"
        return msg


# ---------------------------------------------------------------------------------------------------------------
# Reading records


def language_name(code: str | None) -> str | None:
    if code is None:
        return None
    return LANGUAGE_NAMES.get(code.strip().lower(), code.strip())


def _read_text_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(path, f"not valid UTF-8 (byte {e.start})", line=line) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    for i, line in enumerate(_read_text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"malformed JSON ({e.msg} at column {e.colno})", line=i) from None


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    text = "\n".join(_read_text_lines(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON ({e.msg} at column {e.colno})", line=e.lineno) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(path, "a .json file must hold an array of records")
    yield from enumerate(data)  # row numbers are 0-based for arrays


def _read_delimited(path: Path, delimiter: str) -> Iterator[tuple[int, Any]]:
    lines = _read_text_lines(path)
    reader = csv.DictReader(lines, delimiter=delimiter)
    if not reader.fieldnames:
        return
    for row in reader:
        line = reader.line_num  # 1-based line in the file, header is line 1
        if None in row:
            raise DataError(
                path,
                f"{len(row[None]) + len(reader.fieldnames)} columns, header has {len(reader.fieldnames)}",
                line=line,
            )
        yield line, {k: (v if v != "" else None) for k, v in row.items()}


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(path, f"not a readable Parquet file ({e})") from None
    yield from enumerate(table.to_pylist())


def _read_text_pair(src: Path, tgt: Path, cfg_src: str | None, cfg_trg: str | None) -> Iterator[tuple[int, Any]]:
    src_lines, tgt_lines = _read_text_lines(src), _read_text_lines(tgt)
    if len(src_lines) != len(tgt_lines):
        raise DataError(tgt, f"{len(tgt_lines)} lines, but the source file {src} has {len(src_lines)}")
    src_lang = cfg_src or _lang_from_filename(src)
    trg_lang = cfg_trg or _lang_from_filename(tgt)
    for i, (s, t) in enumerate(zip(src_lines, tgt_lines, strict=True), start=1):
        rec: dict[str, Any] = {"src_text": s, "trg_text": t}
        if src_lang:
            rec["src_lang"] = src_lang
        if trg_lang:
            rec["trg_lang"] = trg_lang
        yield i, rec


def _lang_from_filename(path: Path) -> str | None:
    """`eng_Latn.dev` -> English, `train.de` -> German; None when the name says nothing."""
    for part in [path.stem, *path.suffixes, path.name.split(".")[0]]:
        code = part.lstrip(".").lower()
        if code in LANGUAGE_NAMES:
            return LANGUAGE_NAMES[code]
    return None


def iter_records(path: str | Path, src_lang: str | None = None, trg_lang: str | None = None):
    """Yield (line or row number, record dict) from any supported file; `a,b` is a pair of text files."""
    spec = str(path)
    if TEXT_PAIR_SEPARATOR in spec and not Path(spec).exists():
        src, tgt = (Path(p) for p in spec.split(TEXT_PAIR_SEPARATOR, 1))
        for p in (src, tgt):
            if not p.is_file():
                raise DataError(p, "file not found")
        return _read_text_pair(src, tgt, src_lang, trg_lang)
    p = Path(spec)
    if not p.is_file():
        raise DataError(p, "file not found")
    suffix = p.suffix.lower()
    readers = {
        ".jsonl": _read_jsonl,
        ".ndjson": _read_jsonl,
        ".json": _read_json,
        ".csv": lambda q: _read_delimited(q, ","),
        ".tsv": lambda q: _read_delimited(q, "\t"),
        ".parquet": _read_parquet,
        ".pq": _read_parquet,
    }
    if suffix not in readers:
        raise DataError(
            p,
            f"unknown file type '{suffix}'; use .jsonl, .json, .csv, .tsv, .parquet, or "
            "two line-aligned text files given as SRC,TGT",
        )
    return readers[suffix](p)


def detect_schema(record: dict[str, Any]) -> str | None:
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


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.sha256()
    for part in str(path).split(TEXT_PAIR_SEPARATOR) if not Path(path).exists() else [str(path)]:
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


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
        if not isinstance(rec, dict):
            raise DataError(first_path, f"each record must be an object, got {type(rec).__name__}", line=line)
        rec_schema = detect_schema(rec)
        if rec_schema is None:
            raise DataError(
                first_path,
                f"unknown schema (fields: {', '.join(sorted(rec)) or 'none'}); expected "
                "src_text/trg_text, instruction/input/output, or messages",
                line=line,
            )
        if schema is None:
            schema = rec_schema
        elif rec_schema != schema:
            raise DataError(first_path, f"schema '{rec_schema}' differs from the file's '{schema}'", line=line)
        if schema == "translation":
            prompt, target = _build_translation(first_path, line, rec, prompt_template, src_lang, trg_lang)
        elif schema == "instruction":
            prompt, target = _build_instruction(first_path, line, rec)
        else:
            prompt, target = _build_chat(first_path, line, rec)
        examples.append(Example(id=str(len(examples)), prompt=prompt, target=target, record=rec, schema=schema))
    if not examples:
        raise DataError(first_path, f"the {role} set is empty")
    _assign_ids(first_path, examples)
    return Dataset(path=str(path), schema=schema or "", examples=examples, fingerprint=file_fingerprint(path))


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

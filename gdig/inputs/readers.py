"""Read any supported input file into numbered records: JSONL, JSON, CSV, TSV, Parquet, or two line-aligned text
files given as SRC,TGT. Every error names the file, the line or row, and the field."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def language_name(code: str | None) -> str | None:
    """The name a prompt uses for a language code (`de` -> German); an unknown code is kept as it is."""
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


def file_fingerprint(path: str | Path) -> str:
    """sha256 of the file's bytes (both files of a SRC,TGT pair): a run records exactly which data it scored."""
    h = hashlib.sha256()
    for part in str(path).split(TEXT_PAIR_SEPARATOR) if not Path(path).exists() else [str(path)]:
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]

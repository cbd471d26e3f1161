"""Every input format and schema, stable ids, the prompt, masking, truncation, and each bad-input message."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_pairs, write_jsonl
from gdig.config import DEFAULT_PROMPT
from gdig.inputs.data import IGNORE_INDEX, load_dataset, tokenize_dataset, tokenize_example
from gdig.inputs.readers import DataError

PAIRS = make_pairs(4, seed=5)


def _expected_prompts():
    return [DEFAULT_PROMPT.format(trg_lang="German", src_text=p["src_text"]) for p in PAIRS]


def test_official_template_is_exact():
    ds = load_dataset(write_jsonl_tmp(PAIRS))
    assert ds.examples[0].prompt == f'Translate the following text into German\n\nText:\n"{PAIRS[0]["src_text"]}"\n\n'
    assert [e.target for e in ds.examples] == [p["trg_text"] for p in PAIRS]


def write_jsonl_tmp(records, name="d.jsonl"):
    import tempfile
    from pathlib import Path

    return write_jsonl(Path(tempfile.mkdtemp()) / name, records)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "tsv", "parquet", "textpair"])
def test_every_format_gives_the_same_examples(tmp_path, fmt):
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    elif fmt == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(PAIRS))
    elif fmt in ("csv", "tsv"):
        import csv

        path = tmp_path / f"d.{fmt}"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(PAIRS[0]), delimiter="," if fmt == "csv" else "\t")
            w.writeheader()
            w.writerows(PAIRS)
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(PAIRS), path)
    else:
        (tmp_path / "train.en").write_text("".join(p["src_text"] + "\n" for p in PAIRS))
        (tmp_path / "train.de").write_text("".join(p["trg_text"] + "\n" for p in PAIRS))
        path = f"{tmp_path / 'train.en'},{tmp_path / 'train.de'}"
    ds = load_dataset(path)
    assert ds.schema == "translation"
    assert [e.prompt for e in ds.examples] == _expected_prompts()
    assert [e.target for e in ds.examples] == [p["trg_text"] for p in PAIRS]
    assert ds.ids == ["0", "1", "2", "3"]


def test_instruction_and_chat_schemas(tmp_path):
    recs = [{"instruction": "Say hi", "input": "", "output": "hi"}]
    recs.append({"instruction": "Echo", "input": "x", "output": "x"})
    inst = load_dataset(write_jsonl(tmp_path / "i.jsonl", recs))
    assert inst.schema == "instruction"
    assert inst.examples[0].prompt == "Say hi\n\n" and inst.examples[1].prompt == "Echo\n\nx\n\n"
    chat = load_dataset(
        write_jsonl(
            tmp_path / "c.jsonl",
            [{"messages": [{"role": "user", "content": "Translate: Hund"}, {"role": "assistant", "content": "dog"}]}],
        )
    )
    assert chat.schema == "chat"
    assert chat.examples[0].target == "dog" and chat.examples[0].prompt.endswith("assistant: ")


def test_own_ids_are_used_when_unique(tmp_path):
    recs = [dict(p, id=f"x{i}") for i, p in enumerate(PAIRS)]
    assert load_dataset(write_jsonl(tmp_path / "d.jsonl", recs)).ids == ["x0", "x1", "x2", "x3"]


def test_tokenisation_masks_the_prompt_and_appends_eos(tokenizer):
    ds = load_dataset(write_jsonl_tmp(PAIRS))
    ex = ds.examples[0]
    t = tokenize_example(tokenizer, ex, 512)
    n_prompt = len(tokenizer(ex.prompt).input_ids)
    target = tokenizer(ex.target, add_special_tokens=False).input_ids
    assert t.input_ids[:n_prompt] == tokenizer(ex.prompt).input_ids
    assert t.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert t.labels[n_prompt:] == target + [tokenizer.eos_token_id]
    assert t.input_ids[n_prompt:] == target + [tokenizer.eos_token_id]


def test_truncation_is_counted_and_reported(tokenizer):
    ds = load_dataset(write_jsonl_tmp(PAIRS))
    short = min(len(tokenizer(e.prompt).input_ids) for e in ds.examples) - 1
    toks, report = tokenize_dataset(tokenizer, ds, max_length=short)
    assert all(len(t.input_ids) == short and t.truncated for t in toks)
    assert report.n_truncated == 4 and report.n_without_target == 4
    assert "4 of 4 examples truncated" in report.summary() and "lost every target token" in report.summary()


# -- bad input: each message names the file, the line or row, and the field -------------------------------------


def _bad(tmp_path, name: str, content: str | bytes) -> str:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(p)


GOOD = json.dumps(PAIRS[0])


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("a.jsonl", GOOD + "\n{not json\n", r"a\.jsonl:2: malformed JSON"),
        ("a.jsonl", GOOD + '\n{"src_text": "x", "trg_lang": "de"}\n', r"a\.jsonl:2: field 'trg_text': missing"),
        (
            "a.jsonl",
            GOOD + '\n{"src_text": "x", "trg_text": "  ", "trg_lang": "de"}\n',
            r"a\.jsonl:2: field 'trg_text': empty target",
        ),
        ("a.jsonl", '{"text": "hello"}\n', r"a\.jsonl:1: unknown schema \(fields: text\)"),
        ("a.jsonl", GOOD.encode() + b'\n{"src_text": "\xff\xfe", "trg_text": "x"}\n', r"a\.jsonl:2: not valid UTF-8"),
        (
            "a.jsonl",
            json.dumps(dict(PAIRS[0], id=1)) + "\n" + json.dumps(dict(PAIRS[1], id=1)) + "\n",
            r"a\.jsonl: field 'id': duplicate id '1'",
        ),
        ("a.jsonl", "\n\n", r"a\.jsonl: the data set is empty"),
        ("a.jsonl", '{"src_text": "x", "trg_text": "y"}\n', r"a\.jsonl:1: field 'trg_lang': missing, and no default"),
        ("a.jsonl", '{"src_text": 3, "trg_text": "y", "trg_lang": "de"}\n', r"a\.jsonl:1: field 'src_text': must be"),
        ("a.csv", "src_text,trg_text,trg_lang\nx,y,de\nx,y,de,extra\n", r"a\.csv:3: 4 columns, header has 3"),
        ("a.json", '{"a": 1}', r"a\.json: a \.json file must hold an array"),
        ("a.xml", "<x/>", r"a\.xml: unknown file type '\.xml'"),
        (
            "a.jsonl",
            '{"messages": [{"role": "user", "content": "hi"}]}\n',
            r"a\.jsonl:1: field 'messages': the last message must be the assistant's",
        ),
    ],
)
def test_bad_input_messages(tmp_path, name, content, expected):
    with pytest.raises(DataError, match=expected):
        load_dataset(_bad(tmp_path, name, content))


def test_mismatched_text_files(tmp_path):
    (tmp_path / "s.en").write_text("a\nb\nc\n")
    (tmp_path / "t.de").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"t\.de: 2 lines, but the source file .*s\.en has 3"):
        load_dataset(f"{tmp_path / 's.en'},{tmp_path / 't.de'}")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load_dataset(tmp_path / "nope.jsonl")


def test_empty_seed_set_names_its_role(tmp_path):
    with pytest.raises(DataError, match="the seed set is empty"):
        load_dataset(_bad(tmp_path, "s.jsonl", ""), role="seed")

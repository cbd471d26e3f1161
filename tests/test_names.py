"""One naming rule for runs and saved selections: a single safe path component."""

from __future__ import annotations

import pytest

from gdig.names import check_name, safe_file_name


@pytest.mark.parametrize("name", ["run-1", "my_run.v2", "A", "x" * 100])
def test_safe_names_pass_stripped(name):
    assert check_name(f"  {name} ") == name


@pytest.mark.parametrize("name", ["", "..", "../x", "a/b", ".hidden", "a..b", "x" * 101, "ünïcode", "a b"])
def test_names_that_could_escape_or_hide_are_refused(name):
    with pytest.raises(ValueError, match="use 1-100 letters"):
        check_name(name, "run name")


@pytest.mark.parametrize(
    ("upload", "saved"),
    [
        ("pool.jsonl", "pool.jsonl"),
        ("../../etc/passwd", "passwd"),
        ("C:\\data\\my pool.csv", "my_pool.csv"),
        (".env", "env"),
        ("..", "upload"),
        ("a..b.jsonl", "a_b.jsonl"),
    ],
)
def test_uploaded_file_names_are_reduced_to_one_safe_component(upload, saved):
    assert safe_file_name(upload) == saved

"""One rule for the names a user gives to things the app writes (runs, saved selections): a name is one safe
path component, so it can never climb out of its folder or hide as a dot-file."""

from __future__ import annotations

import re

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_name(name: str, what: str = "name") -> str:
    """Return `name` stripped, or raise ValueError saying which characters are allowed."""
    name = name.strip()
    if not NAME_RE.match(name) or ".." in name:
        raise ValueError(
            f"{what} {name!r}: use 1-100 letters, digits, '-', '_' or '.', starting with a letter or digit "
            "(no '..', no '/')"
        )
    return name


def safe_file_name(name: str) -> str:
    """An uploaded file's name reduced to the allowed characters (its extension kept)."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip("._") or "upload"
    return base.replace("..", "_")[:100]

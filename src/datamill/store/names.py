"""Folder and item names, and the slash-separated paths built from them.

Rejected: empty names, ``.`` and ``..``, ``/`` and ``\\``, NUL and other control characters,
leading or trailing white space, and names over 255 UTF-8 bytes (the common file-system limit).
Any other Unicode is fine.
"""

from __future__ import annotations

import unicodedata

from datamill.errors import InvalidName

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` (NFC-normalised) if usable as a folder or item name, else raise :class:`InvalidName`."""
    if not isinstance(name, str) or name == "":
        raise InvalidName(f"{what} is empty; give it a name", name=name)
    name = unicodedata.normalize("NFC", name)
    if name in {".", ".."}:
        raise InvalidName(f"{what} {name!r} is reserved; choose another name", name=name)
    if "/" in name or "\\" in name:
        raise InvalidName(f"{what} {name!r} contains a slash; use folders for structure", name=name)
    # Printable ASCII (most names) holds no control character: the per-character look-up is skipped.
    bad = [] if name.isascii() and name.isprintable() else [c for c in name if _control(c)]
    if bad:
        raise InvalidName(f"{what} {name!r} contains control character {bad[0]!r}; remove it", name=name)
    if name != name.strip():
        raise InvalidName(f"{what} {name!r} starts or ends with white space; trim it", name=name)
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidName(
            f"{what} is {len(name.encode('utf-8'))} bytes long; the limit is {MAX_NAME_BYTES}", name=name[:40]
        )
    return name


def _control(c: str) -> bool:
    return unicodedata.category(c) in {"Cc", "Cs"} or c == "\x7f"


def split_path(path: str) -> list[str]:
    """``"Raw Data/2026/"`` -> ``["Raw Data", "2026"]``, each part checked. ``""`` or ``"/"`` is the root."""
    parts = [p for p in path.strip("/").split("/")] if path.strip("/") else []
    out = [check_name(p, "folder name") for p in parts]
    joined = "/".join(out)
    if len(joined.encode("utf-8")) > MAX_PATH_BYTES:
        raise InvalidName(f"path is longer than {MAX_PATH_BYTES} bytes; use a shallower tree", path=joined[:60])
    return out


def join_path(*parts: str) -> str:
    """Join path parts, ignoring empty ones."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def split_item_path(path: str) -> tuple[str, str]:
    """``"Raw Data/a.csv"`` -> ``("Raw Data", "a.csv")``."""
    parts = split_path(path)
    if not parts:
        raise InvalidName("an item path needs a folder and a name, e.g. 'Raw Data/a.csv'", path=path)
    if len(parts) == 1:
        raise InvalidName(f"{path!r} names no folder; items live in folders, e.g. 'Raw Data/{parts[0]}'", path=path)
    return "/".join(parts[:-1]), parts[-1]

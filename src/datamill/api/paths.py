"""Folder and item paths in URLs: ``/api/v1/<noun>/<segment>/<segment>...``, one segment per name.

Each name is percent-encoded on its own, so a name may hold spaces, ``#``, ``?``, ``%`` or any
Unicode. The server must split the path BEFORE decoding: the ASGI ``path`` is already decoded,
and there a name ``a%2Fb`` would become two names. :func:`url_path` therefore reads the raw path,
and a decoded segment that still holds a ``/`` is a rejected name (400 ``invalid_name``), as are
empty segments (``a//b``, a trailing ``/``), ``.`` and ``..``.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import unquote

from fastapi import Depends, Request
from fastapi import Path as PathParam
from starlette.convertors import PathConvertor, register_url_convertor

from datamill.errors import InvalidName
from datamill.store.names import check_name

PATH_DOC = (
    "A folder or item path: names separated by '/', each name percent-encoded on its own "
    "(a '/' inside a name is %2F and is rejected)."
)


class NamesConvertor(PathConvertor):
    """Starlette's ``path`` convertor, but matching newlines too (``.`` does not, without DOTALL).

    A name with an encoded newline would otherwise match no route and get a misleading 404
    instead of 400 ``invalid_name``.
    """

    regex = "(?s:.*)"


#: Routes write ``{path:names}`` for a folder or item path.
register_url_convertor("names", NamesConvertor())


def join_segments(segments: list[str]) -> str:
    """Check decoded names and join them. No segment at all (``/folders/``) is the root ``""``.

    Unlike a path string given to the store, an empty segment anywhere (``a//b``, ``a/``) is an
    empty name and rejected: the client never sends one, so it is a mistake worth reporting.
    """
    if segments == [""]:
        return ""
    return "/".join(check_name(s) for s in segments)


def _decode(segment: str) -> str:
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise InvalidName("a name in the URL is not valid UTF-8 once percent-decoded") from None


def url_path(request: Request, path: Annotated[str, PathParam(description=PATH_DOC)]) -> str:
    """The folder/item path of this request, split on the raw URL's slashes and checked name by name."""
    raw = request.scope.get("raw_path")
    template = getattr(request.scope.get("route"), "path", "")
    static = template.split("{", 1)[0]
    if isinstance(raw, bytes) and static:
        text = raw.decode("latin-1")
        at = text.find(static)
        if at >= 0:
            return join_segments([_decode(s) for s in text[at + len(static) :].split("/")])
    # No raw path (some servers): the decoded one is the best there is.
    return join_segments(path.split("/"))


#: A route's ``{path:names}``, decoded and checked.
UrlPath = Annotated[str, Depends(url_path)]

"""Folders: create, read, list, move/rename, delete, metadata, sharing and public read.

Routes (under ``/api/v1``), each noun its own prefix so that no folder name can collide with a
sub-resource:

* ``GET /subfolders`` and ``GET /subfolders/{path}``: the folders at the top level / below a folder
* ``POST /folders/{path}`` create, ``GET`` read, ``PATCH`` move or rename, ``DELETE`` delete
* ``PATCH /folder-metadata/{path}``: set/unset metadata keys
* ``GET|PUT|DELETE /access/{path}``: list, grant, revoke (to a user or a group);
  ``PUT /public/{path}``: public read
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from datamill.api.deps import ActorDep, HomeDep, blocking
from datamill.api.openapi import errors
from datamill.api.paths import UrlPath
from datamill.api.schemas import Done, FolderOut, list_of
from datamill.errors import InvalidInput
from datamill.store.access import Level

router = APIRouter(tags=["folders"])


class FolderCreate(BaseModel):
    """How to create a folder."""

    parents: bool = Field(True, description="Create missing parent folders too.")
    exist_ok: bool = Field(False, description="Return an existing folder instead of failing with 409.")
    metadata: Any = Field(None, description="A JSON object of metadata for the new folder.")


class FolderMove(BaseModel):
    """Where a folder goes: a new parent ("" for the top level) and optionally a new name."""

    parent: str = Field(description="The new parent folder's path; '' for the top level.")
    name: str | None = Field(None, description="A new name; keep the current one when absent.")


class MetadataChange(BaseModel):
    """Metadata keys to set (a JSON object) and keys to remove."""

    set: Any = Field(None, description="A JSON object of keys to set.")
    unset: list[str] = Field(default_factory=list, description="Keys to remove.")


class Grant(BaseModel):
    """An access grant for one user or one group (give exactly one of ``user`` and ``group``)."""

    user: str | None = Field(None, description="The user to grant access to.")
    group: str | None = Field(None, description="The group to grant access to (you must be a member of it).")
    level: Literal["read", "write", "admin", "none"] = Field(description="'none' removes the grant.")


class PublicFlag(BaseModel):
    """Whether everyone may read the folder."""

    public: bool


class AccessEntry(BaseModel):
    """A grant made on a folder, to a user or to a group (the other key is absent)."""

    user: str | None = None
    group: str | None = None
    level: str


def _one_grantee(user: str | None, group: str | None) -> None:
    if (user is None) == (group is None):
        raise InvalidInput("give exactly one of 'user' and 'group'")


class Deleted(BaseModel):
    """What a folder deletion removed."""

    ok: bool = True
    items: int


@router.get("/subfolders", response_model=list_of(FolderOut), summary="List top-level folders")
async def list_top_folders(actor: ActorDep, home: HomeDep) -> JSONResponse:
    """The top-level folders you may read."""
    folders = await blocking(home.store.list_folders, actor, "")
    return JSONResponse([f.to_dict() for f in folders])


@router.get(
    "/subfolders/{path:names}",
    response_model=list_of(FolderOut),
    responses=errors(400, 404),
    summary="List subfolders",
)
async def list_subfolders(path: UrlPath, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """The folders directly below a folder."""
    folders = await blocking(home.store.list_folders, actor, path)
    return JSONResponse([f.to_dict() for f in folders])


@router.get(
    "/folders/{path:names}",
    response_model=FolderOut,
    responses=errors(400, 404),
    summary="Get a folder",
)
async def get_folder(path: UrlPath, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """One folder."""
    folder = await blocking(home.store.get_folder, actor, path)
    return JSONResponse(folder.to_dict())


@router.post(
    "/folders/{path:names}",
    response_model=FolderOut,
    status_code=201,
    responses=errors(400, 403, 404, 409),
    summary="Create a folder",
)
async def create_folder(
    path: UrlPath, actor: ActorDep, home: HomeDep, body: FolderCreate | None = None
) -> JSONResponse:
    """Create a folder (and its missing parents unless ``parents`` is false)."""
    body = body or FolderCreate(parents=True, exist_ok=False, metadata=None)
    folder = await blocking(
        home.store.create_folder,
        actor,
        path,
        parents=body.parents,
        exist_ok=body.exist_ok,
        metadata=body.metadata,
    )
    return JSONResponse(folder.to_dict(), status_code=201)


@router.patch(
    "/folders/{path:names}",
    response_model=FolderOut,
    responses=errors(400, 403, 404, 409),
    summary="Move or rename a folder",
)
async def move_folder(path: UrlPath, body: FolderMove, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """Move a folder under ``parent`` (and rename it to ``name`` when given). Needs admin access."""
    folder = await blocking(home.store.move_folder, actor, path, body.parent, body.name)
    return JSONResponse(folder.to_dict())


@router.delete(
    "/folders/{path:names}",
    response_model=Deleted,
    responses=errors(400, 403, 404, 409),
    summary="Delete a folder",
)
async def delete_folder(
    path: UrlPath,
    actor: ActorDep,
    home: HomeDep,
    recursive: bool = Query(False, description="Delete its subfolders and items too."),
) -> dict[str, Any]:
    """Delete a folder; a non-empty one only with ``recursive``. Needs admin access."""
    n = await blocking(home.store.delete_folder, actor, path, recursive)
    return {"ok": True, "items": n}


@router.patch(
    "/folder-metadata/{path:names}",
    response_model=FolderOut,
    responses=errors(400, 403, 404),
    summary="Change folder metadata",
)
async def set_folder_metadata(path: UrlPath, body: MetadataChange, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """Set and unset metadata keys of a folder."""
    folder = await blocking(home.store.set_folder_metadata, actor, path, body.set, body.unset)
    return JSONResponse(folder.to_dict())


@router.get(
    "/access/{path:names}",
    response_model=list[AccessEntry],
    response_model_exclude_none=True,
    responses=errors(400, 403, 404),
    summary="List a folder's grants",
)
async def access_list(path: UrlPath, actor: ActorDep, home: HomeDep) -> list[dict[str, Any]]:
    """The grants made on this folder to users and to groups (not inherited ones)."""
    return await blocking(home.store.access_list, actor, path)


@router.put(
    "/access/{path:names}",
    response_model=Done,
    responses=errors(400, 403, 404),
    summary="Share a folder",
)
async def share(path: UrlPath, body: Grant, actor: ActorDep, home: HomeDep) -> dict[str, Any]:
    """Grant a user or a group read, write or admin on a folder ('none' revokes). Needs admin access."""
    _one_grantee(body.user, body.group)
    if body.group is not None:
        await blocking(home.store.share_group, actor, path, body.group, Level.parse(body.level))
    elif body.user is not None:
        await blocking(home.store.share, actor, path, body.user, Level.parse(body.level))
    return {"ok": True}


@router.delete(
    "/access/{path:names}",
    response_model=Done,
    responses=errors(400, 403, 404),
    summary="Unshare a folder",
)
async def unshare(
    path: UrlPath,
    actor: ActorDep,
    home: HomeDep,
    user: str | None = Query(None, description="The user to revoke."),
    group: str | None = Query(None, description="The group to revoke."),
) -> dict[str, Any]:
    """Remove a user's or a group's grant on a folder. Needs admin access."""
    _one_grantee(user, group)
    if group is not None:
        await blocking(home.store.share_group, actor, path, group, Level.NONE)
    elif user is not None:
        await blocking(home.store.share, actor, path, user, Level.NONE)
    return {"ok": True}


@router.put(
    "/public/{path:names}",
    response_model=Done,
    responses=errors(400, 403, 404),
    summary="Switch public read",
)
async def set_public(path: UrlPath, body: PublicFlag, actor: ActorDep, home: HomeDep) -> dict[str, Any]:
    """Let everyone (``public: true``) or only grantees read a folder. Needs admin access."""
    await blocking(home.store.set_public, actor, path, body.public)
    return {"ok": True}

"""Groups of users, shared with like users (folder grants to groups are under ``/access``).

* ``GET /api/v1/groups``: your groups (every group for a site admin); ``POST /api/v1/groups`` create
* ``GET|DELETE /api/v1/groups/{name}``: a group's members and grants; delete it (group admins)
* ``PUT|DELETE /api/v1/groups/{name}/members/{user}``: add a member (or change their admin flag);
  remove one (group admins, or the member themselves)

A group you are not a member of answers 404, as a missing one does (site admins see every group).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from datamill.api.deps import ActorDep, HomeDep, blocking
from datamill.api.schemas import Done, list_of, model_of
from datamill.store.groups import GroupInfo

router = APIRouter(tags=["groups"])

GroupOut = model_of(GroupInfo, "Group")

# Annotated, not one Path() shared as the default of several routes: FastAPI sets the alias of a
# default's FieldInfo in place when it builds a route (lazily, at its first request), so the next
# route built with the same object met an alias pydantic warns about; under the tests' "warnings are
# errors" that warning, raised in the server's thread, failed whichever request built that route.
GroupName = Annotated[str, Path(description="The group's name.", max_length=255)]
UserName = Annotated[str, Path(description="The user's name.", max_length=255)]


class GroupCreate(BaseModel):
    """A new group."""

    name: str = Field(description="1-64 letters, digits, '.', '_', '-' or '@', starting with a letter or digit.")


class MemberSet(BaseModel):
    """How a user belongs to a group."""

    admin: bool | None = Field(
        None,
        description="true: a group admin (may add and remove members); false: an ordinary member; "
        "absent: a new member is ordinary, an existing one stays as they are.",
    )


class GroupDeleted(BaseModel):
    """What deleting a group removed."""

    ok: bool = True
    grants: int = Field(description="How many folder grants of the group were removed.")


@router.get("/groups", response_model=list_of(GroupOut), summary="List groups")
async def list_groups(actor: ActorDep, home: HomeDep) -> JSONResponse:
    """The groups you are a member of; every group for a site admin."""
    found = await blocking(home.store.list_groups, actor)
    return JSONResponse([g.to_dict() for g in found])


@router.post("/groups", response_model=GroupOut, status_code=201, summary="Create a group")
async def create_group(body: GroupCreate, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """Create a group; you become its first group admin."""
    group = await blocking(home.store.create_group, actor, body.name)
    return JSONResponse(group.to_dict(), status_code=201)


@router.get("/groups/{name}", response_model=GroupOut, summary="Get a group")
async def get_group(actor: ActorDep, home: HomeDep, name: GroupName) -> JSONResponse:
    """A group's members and folder grants (its members and site admins only)."""
    group = await blocking(home.store.get_group, actor, name)
    return JSONResponse(group.to_dict())


@router.delete("/groups/{name}", response_model=GroupDeleted, summary="Delete a group")
async def delete_group(actor: ActorDep, home: HomeDep, name: GroupName) -> dict[str, Any]:
    """Delete a group with its folder grants (group admins and site admins)."""
    grants = await blocking(home.store.delete_group, actor, name)
    return {"ok": True, "grants": grants}


@router.put("/groups/{name}/members/{user}", response_model=GroupOut, summary="Add a group member")
async def add_member(
    actor: ActorDep, home: HomeDep, name: GroupName, user: UserName, body: MemberSet | None = None
) -> JSONResponse:
    """Add a user to a group, or change whether they are a group admin (group admins and site admins)."""
    admin = body.admin if body is not None else None
    group = await blocking(home.store.add_group_member, actor, name, user, admin)
    return JSONResponse(group.to_dict())


@router.delete("/groups/{name}/members/{user}", response_model=Done, summary="Remove a group member")
async def remove_member(actor: ActorDep, home: HomeDep, name: GroupName, user: UserName) -> dict[str, Any]:
    """Remove a user from a group (group admins, site admins, or the member leaving); their access through it ends."""
    await blocking(home.store.remove_group_member, actor, name, user)
    return {"ok": True}

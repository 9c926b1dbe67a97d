"""One page of a folder's items: sorted, filtered and counted in the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from datamill.errors import InvalidInput, NotFound
from datamill.home import Home
from tests.helpers import add_user


@pytest.fixture
def filled(home: Home) -> Home:
    admin = home.admin
    home.store.create_folder(admin, "Tab")
    home.store.put_many(admin, "Tab", [(f"n{i:02}_{'Ab' if i % 3 else 'x'}.txt", b"z" * (i % 7)) for i in range(25)])
    home.store.put(admin, "Tab", "n03_x.txt", b"second version")  # version 2, updated last
    return home


def test_pages_in_name_order_with_the_total(filled: Home) -> None:
    admin = filled.admin
    first = filled.store.page_items(admin, "Tab", limit=10)
    second = filled.store.page_items(admin, "Tab", offset=10, limit=10)
    last = filled.store.page_items(admin, "Tab", offset=20, limit=10)
    names = [i.name for p in (first, second, last) for i in p.items]
    assert names == sorted(names) and len(names) == 25 and len(set(names)) == 25
    assert first.total == second.total == last.total == 25 and len(last.items) == 5
    assert first.made_by == ["admin"] * 10


def test_sorts_by_size_version_and_date_with_name_breaking_ties(filled: Home) -> None:
    admin = filled.admin
    by_size = filled.store.page_items(admin, "Tab", sort="size", descending=True, limit=100).items
    assert by_size[0].name == "n03_x.txt" and by_size[0].size == len(b"second version")
    sizes = [i.size for i in by_size]
    assert sizes == sorted(sizes, reverse=True)
    ties = [i.name for i in by_size if i.size == 6]
    assert ties == sorted(ties, reverse=True)
    by_version = filled.store.page_items(admin, "Tab", sort="version", descending=True, limit=1).items
    assert [(i.name, i.version) for i in by_version] == [("n03_x.txt", 2)]
    newest = filled.store.page_items(admin, "Tab", sort="updated", descending=True, limit=1).items
    assert newest[0].name == "n03_x.txt"


def test_filters_on_a_name_substring_ignoring_case_and_wildcards(filled: Home) -> None:
    admin = filled.admin
    page = filled.store.page_items(admin, "Tab", contains="ab")
    assert page.total == 16 and all("Ab" in i.name for i in page.items)
    assert filled.store.page_items(admin, "Tab", contains="_X").total == 9  # '_' is a character, not a wildcard
    assert filled.store.page_items(admin, "Tab", contains="%").total == 0


def test_checks_access_and_arguments(filled: Home) -> None:
    bob = add_user(filled, "bob")
    with pytest.raises(NotFound):
        filled.store.page_items(bob, "Tab")
    with pytest.raises(InvalidInput, match="sort by one of name, size, version, updated"):
        filled.store.page_items(filled.admin, "Tab", sort="digest")
    with pytest.raises(InvalidInput, match="a page holds 1 to 1000 items"):
        filled.store.page_items(filled.admin, "Tab", limit=0)

"""The Dagster tests need Dagster (the ``datamill[dagster]`` extra); without it they are skipped, saying so."""

from __future__ import annotations

import pytest

pytest.importorskip("dagster", reason="Dagster is not installed: install the extra, uv sync --extra dagster")

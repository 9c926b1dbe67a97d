"""Two assets over the items datamill hands the job: word counts, then a one-line summary."""

import dagster as dg
from datamill.dagster import DatamillResource


@dg.asset(code_version="words-1")
def words(datamill: DatamillResource) -> dict:
    """Per input item: how many words it holds."""
    return {f.name: len(f.read_text().split()) for f in datamill.items()}


@dg.asset(code_version="summary-1")
def summary(words: dict) -> str:
    """One line: the total number of words."""
    return f"{sum(words.values())} words in {len(words)} files\n"

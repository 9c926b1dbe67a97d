"""The Dagster job benchmarks/steps_dagster.py runs, as a datamill step and on its own."""

"""The demo dataflow's building blocks.

:mod:`datamill.demo.tabular` holds the pure data functions of the standard tabular pipeline
(CSV, TSV and Excel files to summaries, plots, Parquet, previews, one SQLite database and a
Frictionless data package); ``samples/`` holds small example files for it, one of them
deliberately malformed so that the demo shows a failing task.
"""

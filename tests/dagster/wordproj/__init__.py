"""A small Dagster project the tests run as datamill steps and with datamill as its IO manager."""

"""Security tests: who may see and do what over the real HTTP API, and what must never leak."""

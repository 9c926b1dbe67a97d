"""API routes, one module per noun. Each module exposes ``router``; ``api/app.py`` lists them."""

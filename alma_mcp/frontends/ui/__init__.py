"""`alma-mcp ui`: a local review page over the memory service (see app.py)."""

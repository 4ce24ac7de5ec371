"""FastAPI application (issue #4)."""

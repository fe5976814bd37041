"""Export tests use the store fixtures of the store tests: SQLite, and PostgreSQL when available."""

from tests.store.conftest import store, store_url

__all__ = ["store", "store_url"]

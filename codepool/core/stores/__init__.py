"""Store implementations: SQLite (the embedded default, and memory://) and Redis."""

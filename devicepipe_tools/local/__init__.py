"""Local stack: the template on embedded stand-ins (moto server, Redis, DuckDB)."""

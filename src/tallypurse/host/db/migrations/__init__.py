"""Alembic migrations of the host database (run with ``tallypurse host migrate``)."""

"""Alembic migrations for the easel database (a package so env.py ships with the wheel)."""

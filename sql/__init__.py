"""SQL that ships with the code: numbered migrations in ``sql/migrations``.

A package only so that the ``.sql`` files install with the wheel and can be located
with :mod:`importlib.resources`, wherever the code is installed.
"""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

"""Shared kernel: settings, database access, migrations, registry, CLI."""

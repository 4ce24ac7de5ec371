"""The core every other package stands on: settings, database access, migrations, database roles,
the outbound-request rule and the shared terms (time zone, months, unit levels, the in-range
test). It imports nothing of the system above it (checked by the import contract in
pyproject.toml)."""

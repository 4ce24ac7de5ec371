"""Vaccine ledger and traceability (issue #6)."""

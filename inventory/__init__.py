"""Vaccine ledger and traceability (issue #6): one module per job, imported from the module that
owns the function (no re-exports here). README.md's layout table lists the modules."""

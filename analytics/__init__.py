"""Monthly cold-chain reports and analyst SQL interface (issue #7)."""

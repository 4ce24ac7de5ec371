"""Demo data for a realistic slice of Shaanxi province."""

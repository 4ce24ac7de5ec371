"""Benchmarks: scripts that print their figures (see README, 基准测试)."""

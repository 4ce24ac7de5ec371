"""Alarm rules, escalation and WeChat delivery (issue #5)."""

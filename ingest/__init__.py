"""MQTT ingest of probe readings and gateway status (issue #3)."""

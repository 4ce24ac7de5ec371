"""Demo data for a realistic slice of Shaanxi province.

Loaded only into an empty registry, and never next to real units:
:func:`coldchain.seed.demo.check_demo_registry` refuses a registry that holds units the demo did
not make (its users share a published password, and the gateway simulator would write fake
readings for real probes)."""

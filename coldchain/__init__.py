"""coldchain: the composition root (``coldchain.cli``, the run command, the scheduler's wiring, the
fallback servers, the demo province) on top of the domains, with the core below them all in
``coldchain.core``."""

"""Bearer secrets (session tokens, set-up links, confirmation links): only their hash is stored,
so a copy of the database signs nobody in."""

from __future__ import annotations

import hashlib


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()

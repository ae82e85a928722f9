"""Pinned known-answer vectors for ``secagg`` (regenerate only on a deliberate format change)."""

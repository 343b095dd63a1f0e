"""Backend implementations: `local` (slots on this machine)."""

"""The checkpoint guard: find complete checkpoints, protect them in the vault, score them, keep the right ones."""

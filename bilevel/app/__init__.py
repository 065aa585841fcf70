"""Command-line layer: the only code that imports Hydra (DESIGN §2)."""

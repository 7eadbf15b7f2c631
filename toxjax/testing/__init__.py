"""Helpers that build tiny stand-ins (models, checkpoints) for tests and benchmarks."""

"""Interoperability: transformers export and import, and an lm-evaluation-harness adapter."""

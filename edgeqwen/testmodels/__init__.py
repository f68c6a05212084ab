"""Makers of local checkpoints for tests, demos and benchmarks (no Hub): random-weight fixtures
with the real Qwen vocabulary, and the small Qwen3 trained here whose output means something."""

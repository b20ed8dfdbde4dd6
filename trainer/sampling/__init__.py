"""Sampling: backends (local transformers, OpenAI-compatible servers) and the `sample` job."""

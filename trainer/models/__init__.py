"""Models the trainer builds or fetches: the default chat model and tiny test models."""

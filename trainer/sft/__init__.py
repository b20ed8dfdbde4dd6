"""Supervised fine-tuning on demonstrations (InstructGPT step 1)."""

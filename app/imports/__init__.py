"""Data in: preference files (HH-RLHF, TRL, ranklab rankings) imported as ranked tasks."""

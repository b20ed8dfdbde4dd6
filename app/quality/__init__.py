"""Data quality: inter-labeler agreement, per-labeler statistics, policy win rates."""

"""Artifacts on disk: atomic files, checked artifacts, resumable checkpoints."""

"""The model pool: job naming, loading and sampling members, the teacher, pruning."""

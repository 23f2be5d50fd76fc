"""The method: the registry of methods and objectives, the objectives (BN matching, Taylor, cosine,
unrolled), their losses and meta-gradient helpers, and where synthetic images start (init)."""

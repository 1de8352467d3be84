"""Runnable rstick examples; run them from the repository's root folder."""

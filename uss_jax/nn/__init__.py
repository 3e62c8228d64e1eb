"""Reusable layers shared by several architectures (``film`` for feature-wise linear modulation, ...)."""

"""Importers of teachers trained by other code: each reads a foreign file format into realuid's model spec and
weights (torchcfm's checkpoints here; the RealUID authors' files in :mod:`realuid.authors`), so that a foreign
teacher is distilled, sampled and rebuilt exactly like one the pipeline trained itself.
"""

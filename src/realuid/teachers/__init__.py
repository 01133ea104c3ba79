"""Importers of teachers trained by other code, one module per source format (torchcfm's checkpoints,
diffusers' pipeline folders; the RealUID authors' files in :mod:`realuid.authors`). Each reads a foreign file
into realuid's model spec and weights; a network in another library's convention is wrapped by
:class:`realuid.models.adapter.TeacherAdapter`, which answers in our family's convention, so a foreign teacher
is distilled, sampled and rebuilt exactly like one the pipeline trained itself.
"""

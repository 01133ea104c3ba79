"""Importers of teachers trained by other code, one module per source format; the network they give is
wrapped by :class:`realuid.models.adapter.TeacherAdapter`, which answers in our family's convention."""

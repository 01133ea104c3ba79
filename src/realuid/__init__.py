"""RealUID: universal inverse distillation of matching models into one-step generators."""

__version__ = "0.1.0"

__all__ = ["load_generator", "load_teacher"]


def __getattr__(name: str):
    # The loaders need torch; importing them on first use keeps `import realuid` (and every stage's
    # start-up) free of it.
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'realuid' has no attribute {name!r}")

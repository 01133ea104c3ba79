"""RealUID: universal inverse distillation of matching models into one-step generators."""

__version__ = "0.1.0"

__all__ = ["Generator", "Teacher", "distill", "load_generator", "load_teacher"]
# Where each public name lives.
_HOMES = {"Generator": "api", "Teacher": "api", "distill": "distill_api", "load_generator": "api", "load_teacher": "api"}


def __getattr__(name: str):
    # These need torch; importing them on first use keeps `import realuid` (and every stage's
    # start-up) free of it.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'realuid' has no attribute {name!r}")

"""RealUID: universal inverse distillation of matching models into one-step generators."""

__version__ = "0.1.0"

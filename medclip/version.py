"""The medclip version: one constant, imported by the package root and by whatever records it (no cycle)."""

__version__ = "0.1.0"

"""See av/__init__.py: names only, any use raises."""
from av import _Missing


def __getattr__(name: str):
    return _Missing

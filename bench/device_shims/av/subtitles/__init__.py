"""See av/__init__.py."""

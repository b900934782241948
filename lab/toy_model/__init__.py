"""Training and checking the toy-world model (NOTES.md)."""

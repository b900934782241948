"""What each part of ReVersion buys on the toy world (NOTES.md)."""

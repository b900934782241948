"""How exact the toy-world judge is (NOTES.md)."""

"""The tint confound (NOTES.md): unfinished."""

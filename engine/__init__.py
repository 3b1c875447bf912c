"""zarrforge engine."""

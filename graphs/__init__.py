"""zarrforge graphs."""

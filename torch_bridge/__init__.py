"""zarrforge torch_bridge."""

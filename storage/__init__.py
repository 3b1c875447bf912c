"""zarrforge storage: every byte on disk — lazy sources, training stores, provenance and the ledger."""

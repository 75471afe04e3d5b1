"""Field encryption at rest: envelope keys, AEAD field cipher, keyed blind indexes."""

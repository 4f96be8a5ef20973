"""Private helpers: atomic file writes and the cache folder, the one generic registry, the private Keras tlkit relies on."""

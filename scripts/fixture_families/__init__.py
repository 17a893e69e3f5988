"""Reference-fixture families, one module per family group (``common`` holds the shared helpers)."""

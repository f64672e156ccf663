"""The compiled pieces of cache_update, one module per structurally unique piece."""

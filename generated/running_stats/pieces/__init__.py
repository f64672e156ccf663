"""The compiled pieces of running_stats, one module per structurally unique piece."""

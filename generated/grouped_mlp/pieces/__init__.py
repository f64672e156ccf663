"""The compiled pieces of grouped_mlp, one module per structurally unique piece."""

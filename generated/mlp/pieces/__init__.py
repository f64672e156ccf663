"""The compiled pieces of mlp, one module per structurally unique piece."""

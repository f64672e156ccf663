"""The compiled pieces of custom_op, one module per structurally unique piece."""

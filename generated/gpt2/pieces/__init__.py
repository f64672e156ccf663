"""The compiled pieces of gpt2, one module per structurally unique piece."""

"""The compiled pieces of tiny_llama, one module per structurally unique piece."""

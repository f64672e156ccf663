"""The compiled pieces of serving_llama, one module per structurally unique piece."""

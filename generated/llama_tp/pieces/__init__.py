"""The compiled pieces of llama_tp, one module per structurally unique piece."""

"""The compiled pieces of hf_llama, one module per structurally unique piece."""

"""What the assignment stands on, and students need not open: the checkpoint formats (course
.pt, llama2.c .bin, GGUF and its decode cache, Hugging Face folders and tokenizers), Llama 3's RoPE
scaling, the code the parameter-efficient adapters share, and the course table.

Imports point down: these modules use only config.py, utils.py and each other, never the model
files at the root nor the minllama package above them (tests/test_layers.py checks it)."""

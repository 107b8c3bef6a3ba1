"""Chunk: split text into chunks the model reads whole, counted with the model's own tokenizer."""

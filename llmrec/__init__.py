"""llmrec: turn behavior sequences into text, fine-tune language models to recommend, and measure it honestly."""

__version__ = "0.1.0"

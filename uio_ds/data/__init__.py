"""Text sources: generated text for tiny models, and (later) corpora through datasets."""

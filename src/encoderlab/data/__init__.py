"""Data: loading through `datasets.load_dataset`, split building, tokenization and batching."""

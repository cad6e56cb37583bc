"""Models: encoders that map a tokenized batch to logits, and the LightningModule that trains them."""

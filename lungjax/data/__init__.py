"""Data: the NIH label contract, the phantom generator, the TFDS builder and the grain pipeline."""

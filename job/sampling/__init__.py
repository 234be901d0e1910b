"""What trained models produce: drawing digits from a generator (generation, shared with
`job evaluate`), `job sample` writing them into shard sets (sample), and `job transform`
turning handwritten digits into printed ones with the autoencoder (transform)."""

"""`job evaluate`: the report on a generator or a shard set (evaluate), its strings
counterpart (evaluate_strings), the image-quality metrics (quality) and the augmentation
lift experiment (lift)."""

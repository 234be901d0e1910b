"""Training data: the dataset catalogue (datasets), a split as tensors on the device and
the per-rank batch order (loading), staging a dataset to S3 and back (staging), digit
images in MNIST's geometry and preview grids (digit_image), composing digit strings
(strings), and the classifier's augmentation (augment)."""

"""A trial's images: the dataset registry, the file readers, the bundle, device placement."""

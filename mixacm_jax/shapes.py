"""Broadcasting per-example values against a batch."""


def per_example(v, like):
  """`v` (one value per example, shape (N,)) reshaped to (N, 1, ..., 1) so that it
  broadcasts against the batch `like` (N, ...): masks and scales of whole examples."""
  return v.reshape((-1,) + (1,) * (like.ndim - 1))

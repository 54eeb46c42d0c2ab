"""PyTorch <-> Flax weights: safe loading, one rule table per architecture, export back."""

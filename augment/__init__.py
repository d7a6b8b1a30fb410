"""augment: enlarge and rebalance scarce labelled medical image sets with generative models,
and measure honestly, on untouched real test data, whether that helped."""

__version__ = "0.1.0"

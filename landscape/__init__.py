"""landscape: pruning and loss-landscape studies of CNNs across receptive fields."""

__version__ = "0.1.0"

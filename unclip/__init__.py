"""unclip: a faithful, trainable reproduction of DALL·E 2 (unCLIP, Ramesh et al. 2022)."""

__version__ = "0.1.0"

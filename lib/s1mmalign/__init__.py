"""s1mmalign-lake: S1-MMAlign figure/caption pairs into validated, partitioned Delta tables."""

__version__ = "0.1.0"

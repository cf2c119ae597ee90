"""wanflow: the Wan 2.2 video generation models in PyTorch."""

__version__ = "0.1.0"

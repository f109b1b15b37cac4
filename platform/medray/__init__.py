"""medray: medical images from storage to trained models to live HTTP inference, on Ray."""

__version__ = "0.1.0"

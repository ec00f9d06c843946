"""edgedet: real-time object detection on small ARM computers."""

__version__ = "0.1.0"

"""Response surfaces read off a trained network (no training happens here)."""

from .sharpness import final_linear, sharpness_bound

__all__ = ["final_linear", "sharpness_bound"]

"""Image models, their metric network and image quality metrics."""

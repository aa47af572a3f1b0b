"""The HTML gallery of results (`page.py`) and the one way depth is coloured and stored for people (`depth.py`)."""

from regress.gallery.depth import colorize_depth, depth_range, read_depth_png, write_depth_png
from regress.gallery.page import GalleryItem, write_gallery

__all__ = ["GalleryItem", "colorize_depth", "depth_range", "read_depth_png", "write_depth_png", "write_gallery"]

"""alignprobe: assess and learn the alignment of frozen vision and language encoders."""
from alignprobe._version import __version__

__all__ = ["__version__"]

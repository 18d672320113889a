"""ndgeo: learned normalized-difference spectral indices for large multispectral rasters."""

__version__ = "0.1.0"

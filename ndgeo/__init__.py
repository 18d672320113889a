"""ndgeo: learned normalized-difference spectral indices for large multispectral rasters."""

import os

# torch's CPU GEMMs (MKL) otherwise pick code paths by buffer alignment and concurrency on some
# CPUs (AVX-512), so the same pixels could get other last bits in another chunk or engine
# thread; strict conditional numerical reproducibility keeps outputs independent of both. Read
# by MKL at its first call, so this must run before torch computes anything; a value the user
# set wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"

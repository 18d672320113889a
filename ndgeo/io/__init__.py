"""Reading and writing rasters: the one reader (``raster``), window maths (``tiles``), the one
writer (``writer``) and labels read through the reader (``labels``)."""

"""Window maths as pure functions: chunk shapes, window grids, halos and tile alignment.

Every grid ndgeo walks (engine chunks, label tiles, denoiser tiles) comes from here, so a
window means the same thing everywhere: a rasterio ``Window(col_off, row_off, width, height)``
clipped to the raster.
"""

from __future__ import annotations

import math

from rasterio.windows import Window

from ndgeo.errors import NdgeoError


def chunk_shape(
    chunk_size: int, block_shape: tuple[int, int], shape: tuple[int, int]
) -> tuple[int, int]:
    """Chunk (rows, cols): ``chunk_size`` rounded to a multiple of the file's block, clipped."""
    if chunk_size < 1:
        raise NdgeoError(f"chunk size must be positive, got {chunk_size}")
    out = []
    for block, size in zip(block_shape, shape, strict=True):
        step = min(block, size)
        out.append(min(size, max(step, round(chunk_size / step) * step)))
    return out[0], out[1]


def plan_windows(shape: tuple[int, int], chunks: tuple[int, int]) -> list[Window]:
    """Row-major windows of ``chunks`` covering ``shape``; the last row/column may be smaller."""
    height, width = shape
    ch, cw = chunks
    return [
        Window(col, row, min(cw, width - col), min(ch, height - row))
        for row in range(0, height, ch)
        for col in range(0, width, cw)
    ]


def grow(window: Window, halo: int, shape: tuple[int, int]) -> tuple[Window, int, int]:
    """``window`` grown by ``halo`` on each side and clipped to ``shape``, with the row and
    column offset of the original window inside the grown one."""
    row, col = int(window.row_off), int(window.col_off)
    h, w = int(window.height), int(window.width)
    row0, col0 = max(0, row - halo), max(0, col - halo)
    row1, col1 = min(shape[0], row + h + halo), min(shape[1], col + w + halo)
    return Window(col0, row0, col1 - col0, row1 - row0), row - row0, col - col0


def halo_for(receptive_field: int, alignment: int = 1) -> int:
    """The receptive-field radius rounded up to a multiple of ``alignment``."""
    return -(-int(receptive_field) // alignment) * alignment


def aligned_chunk_size(
    chunk_size: int, block_shape: tuple[int, int], shape: tuple[int, int], alignment: int,
    *, name: str = "the image",
) -> int:
    """``chunk_size`` adjusted so that every chunk origin is a multiple of ``alignment``.

    :func:`chunk_shape` rounds the chunk to the file's blocks; the result is rounded to a common
    multiple of the blocks and the alignment (dimensions read as a single chunk need nothing).
    """
    if chunk_size < 1:
        raise NdgeoError(f"chunk size must be positive, got {chunk_size}")
    steps = [min(b, s) for b, s in zip(block_shape, shape, strict=True)]
    multiple = alignment
    for step, size in zip(steps, shape, strict=True):
        if step < size:
            multiple = math.lcm(multiple, step)
    size = max(multiple, round(chunk_size / multiple) * multiple)
    chunks = chunk_shape(size, block_shape, shape)
    for chunk, full in zip(chunks, shape, strict=True):
        if chunk % alignment and chunk < full:
            raise NdgeoError(
                f"cannot align chunks {chunks} of {name} (blocks {block_shape}) to "
                f"{alignment} pixels; rewrite the image with {alignment}-multiple tiles"
            )
    return size


def tiles_touched(
    rows: tuple[float, float], cols: tuple[float, float], tile: int, shape: tuple[int, int]
) -> list[tuple[int, int]]:
    """(tile row, tile col) of the ``tile``-px grid over ``shape`` that the pixel-space box
    ``rows`` x ``cols`` (min, max) touches."""
    r0, r1 = max(rows[0], 0) // tile, min(rows[1], shape[0] - 1) // tile
    c0, c1 = max(cols[0], 0) // tile, min(cols[1], shape[1] - 1) // tile
    return [(tr, tc) for tr in range(int(r0), int(r1) + 1) for tc in range(int(c0), int(c1) + 1)]


def tile_window(tile_row: int, tile_col: int, tile: int, shape: tuple[int, int]) -> Window:
    """The window of tile (``tile_row``, ``tile_col``) of the ``tile``-px grid, clipped."""
    row, col = tile_row * tile, tile_col * tile
    return Window(col, row, min(tile, shape[1] - col), min(tile, shape[0] - row))

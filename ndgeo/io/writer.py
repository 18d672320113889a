"""The one GeoTIFF writer: atomic, tiled, compressed, self-describing, optionally a COG.

Every output goes to a hidden temporary name beside OUT (``.OUT.<random>.tmp.tif``) and is
renamed onto OUT only when complete, so an interrupted run never leaves a half-written file at
OUT (after a SIGKILL only the hidden temporary remains). Windows are written by one process, in
any order. A COG is made in a second pass with rio-cogeo from the finished tiled GTiff, so its
overviews are computed from the real full-resolution pixels (writing COGs straight from dask
gives all-zero overviews: https://github.com/corteva/rioxarray/issues/410).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
import rasterio.errors
from rasterio.windows import Window

from ndgeo.errors import NdgeoError
from ndgeo.io.raster import check_nodata

#: Compressions that take a PREDICTOR / a ZLEVEL creation option.
_PREDICTOR_COMPRESSIONS = {"DEFLATE", "LZW", "ZSTD", "LZMA"}


def creation_profile(
    dtype: str, creation_options: Mapping[str, object] | None = None, *, block_size: int = 256
) -> dict[str, str]:
    """GTiff creation options: tiled and compressed with a dtype-appropriate predictor.

    Integer outputs (class maps) default to DEFLATE level 6, readable by every TIFF reader.
    Float outputs (indices, probabilities, denoised bands) default to ZSTD level 1: after
    PREDICTOR=3 the mantissa noise dominates, and on the sample scene's NDVI ZSTD-1 wrote a file
    1.2% smaller than DEFLATE-6 in a third of the time (DEFLATE-1: 0.3% larger, 1.5x faster).
    Compression is the single writer's main cost, so this sets ``ndgeo index`` throughput
    (``benchmarks/apply_throughput.py``). ZSTD needs GDAL >= 2.3 to read; ``--co
    COMPRESS=DEFLATE`` gives files for older readers. ``creation_options`` (``--co KEY=VALUE``)
    win; PREDICTOR and level defaults are dropped when the chosen compression does not use them.
    """
    user = {str(k).upper(): str(v) for k, v in (creation_options or {}).items()}
    check_creation_options(user)
    is_float = np.dtype(dtype).kind == "f"
    compress = user.get("COMPRESS", "ZSTD" if is_float else "DEFLATE").upper()
    profile = {
        "TILED": "YES",
        "BLOCKXSIZE": str(block_size),
        "BLOCKYSIZE": str(block_size),
        "COMPRESS": compress,
        "BIGTIFF": "IF_SAFER",
    }
    if compress in _PREDICTOR_COMPRESSIONS:
        profile["PREDICTOR"] = "3" if is_float else "2"
    if compress == "DEFLATE":
        profile["ZLEVEL"] = "6"
    if compress == "ZSTD":
        profile["ZSTD_LEVEL"] = "1"
    profile.update(user)
    for key in ("BLOCKXSIZE", "BLOCKYSIZE"):
        if profile["TILED"].upper() in ("YES", "TRUE") and int(profile[key]) % 16:
            raise NdgeoError(f"{key}={profile[key]} must be a multiple of 16")
    return profile


#: GTiff creation options when the GDAL library cannot be asked (see
#: :func:`_driver_creation_options`): GDAL 3.10's list for the keys ndgeo users set. Unknown
#: keys pass in that case (the table is not complete); with GDAL's own list they are refused.
_GTIFF_FALLBACK: dict[str, tuple[str, tuple[str, ...]]] = {
    "COMPRESS": ("string-select", ("NONE", "LZW", "PACKBITS", "JPEG", "CCITTRLE", "CCITTFAX3",
                                   "CCITTFAX4", "DEFLATE", "LZMA", "ZSTD", "WEBP", "LERC",
                                   "LERC_DEFLATE", "LERC_ZSTD", "JXL")),
    "PREDICTOR": ("int", ()), "ZLEVEL": ("int", ()), "ZSTD_LEVEL": ("int", ()),
    "LZMA_PRESET": ("int", ()), "JPEG_QUALITY": ("int", ()), "WEBP_LEVEL": ("int", ()),
    "WEBP_LOSSLESS": ("boolean", ()), "MAX_Z_ERROR": ("float", ()), "NBITS": ("int", ()),
    "NUM_THREADS": ("string", ()), "DISCARD_LSB": ("string", ()),
    "INTERLEAVE": ("string-select", ("BAND", "PIXEL")), "TILED": ("boolean", ()),
    "BLOCKXSIZE": ("int", ()), "BLOCKYSIZE": ("int", ()), "SPARSE_OK": ("boolean", ()),
    "TFW": ("boolean", ()), "BIGTIFF": ("string-select", ("YES", "NO", "IF_NEEDED", "IF_SAFER")),
    "PHOTOMETRIC": ("string-select", ("MINISBLACK", "MINISWHITE", "PALETTE", "RGB", "CMYK",
                                      "YCBCR", "CIELAB", "ICCLAB", "ITULAB")),
    "PROFILE": ("string-select", ("GDALGEOTIFF", "GEOTIFF", "BASELINE")),
}
_BOOLEAN = {"YES", "NO", "TRUE", "FALSE", "ON", "OFF", "1", "0"}
#: Ranges GDAL's GTiff option list states only in words (its driver documentation): a value
#: outside them is ignored with a warning, so it is refused here.
_GTIFF_RANGES = {"ZLEVEL": (1, 12), "ZSTD_LEVEL": (1, 22), "LZMA_PRESET": (0, 9),
                 "JPEG_QUALITY": (1, 100), "WEBP_LEVEL": (1, 100), "PREDICTOR": (1, 3),
                 "BLOCKXSIZE": (16, 65536), "BLOCKYSIZE": (16, 65536), "NBITS": (1, 32)}
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


def _gdal_library():
    """ctypes handle on the GDAL library rasterio runs on (found through rasterio's own
    extension module, so it is exactly that build), or None where it cannot be loaded."""
    try:
        import ctypes

        from rasterio import _base

        return ctypes.CDLL(_base.__file__)
    except (ImportError, OSError):
        return None


@functools.lru_cache(maxsize=4)
def _driver_creation_options(driver: str) -> tuple[dict[str, tuple[str, tuple[str, ...]]], bool]:
    """``{KEY: (type, allowed values)}`` of ``driver`` from GDAL's own metadata
    (``DMD_CREATIONOPTIONLIST``; rasterio has no API for it, so through ctypes) and whether that
    list is GDAL's (True) or the built-in fallback (False)."""
    import ctypes
    import xml.etree.ElementTree as ET

    lib = _gdal_library()
    text = None
    try:
        if lib is not None:
            lib.GDALAllRegister()
            lib.GDALGetDriverByName.restype = ctypes.c_void_p
            lib.GDALGetDriverByName.argtypes = [ctypes.c_char_p]
            lib.GDALGetMetadataItem.restype = ctypes.c_char_p
            lib.GDALGetMetadataItem.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
            handle = lib.GDALGetDriverByName(driver.encode())
            if handle:
                text = lib.GDALGetMetadataItem(handle, b"DMD_CREATIONOPTIONLIST", None)
        options: dict[str, tuple[str, tuple[str, ...]]] = {}
        for option in ET.fromstring(text.decode()).iter("Option") if text else ():
            values = []
            for value in option.iter("Value"):
                values.append((value.text or "").strip().upper())
                if value.get("aliasOf"):
                    values.append(value.get("aliasOf").upper())
            options[option.get("name", "").upper()] = (option.get("type", "string"),
                                                       tuple(values))
    except (AttributeError, OSError, ValueError, ET.ParseError):
        options = {}
    if options:
        return options, True
    return dict(_GTIFF_FALLBACK), False


def check_creation_options(options: Mapping[str, str], driver: str = "GTiff") -> None:
    """Refuse (one line) a ``--co KEY=VALUE`` that ``driver`` does not know or whose value has
    the wrong type or is not one of the listed choices; GDAL itself only warns and ignores it."""
    known, complete = _driver_creation_options(driver)
    for key, value in options.items():
        spec = known.get(key.upper())
        if spec is None:
            if complete:
                raise NdgeoError(f"--co {key}={value}: {driver} has no creation option {key} "
                                 f"(see https://gdal.org/drivers/raster/gtiff.html)")
            continue
        kind, choices = spec
        text = str(value).strip()
        if kind in ("int", "unsigned int", "integer") and not _INTEGER.fullmatch(text):
            raise NdgeoError(f"--co {key}={value}: {key} must be an integer")
        if kind == "unsigned int" and int(text) < 0:
            raise NdgeoError(f"--co {key}={value}: {key} must be >= 0")
        if driver.upper() == "GTIFF" and _INTEGER.fullmatch(text):
            number, (low, high) = int(text), _GTIFF_RANGES.get(key.upper(), (None, None))
            if low is not None and not low <= number <= high:
                raise NdgeoError(f"--co {key}={value}: {key} must be {low}..{high} (GDAL would "
                                 "ignore it)")
            if key.upper() in ("BLOCKXSIZE", "BLOCKYSIZE") and number % 16:
                raise NdgeoError(f"--co {key}={value}: {key} must be a multiple of 16")
        if kind == "float":
            try:
                float(text)
            except ValueError:
                raise NdgeoError(f"--co {key}={value}: {key} must be a number") from None
        if kind == "boolean" and text.upper() not in _BOOLEAN:
            raise NdgeoError(f"--co {key}={value}: {key} must be YES or NO")
        if kind == "string-select" and choices and text.upper() not in choices:
            raise NdgeoError(f"--co {key}={value}: {key} must be one of "
                             f"{', '.join(dict.fromkeys(choices))}")


_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_TEMP_MARK = ".ndgeo-"


def name_limit(directory: str | os.PathLike) -> int:
    """The longest file name ``directory``'s filesystem takes (255 where it cannot be asked)."""
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _temp_prefix(target: Path) -> str:
    """``.NAME.ndgeo-`` for ``target``, NAME cut so a temporary fits the name limit."""
    limit = name_limit(target.parent)
    # Room for the mark, host, the largest Linux pid (2**22), the token, ".tmp" + suffix and a
    # GDAL ".aux.xml" sidecar of the temporary.
    tail = f".{_TEMP_MARK}{_HOST}-{2**22}-{'0' * 8}.tmp{target.suffix}.aux.xml"
    room = limit - len(tail) - 1
    return f".{target.name[:max(room, 1)]}{_TEMP_MARK}"


def temp_path(target: str | os.PathLike) -> Path:
    """A fresh hidden temporary name beside ``target``: ``.NAME.ndgeo-HOST-PID-RANDOM.tmp.EXT``
    (the host and pid let a later run recognise temporaries whose writer is gone)."""
    target = Path(target)
    token = secrets.token_hex(4)
    return target.with_name(
        f"{_temp_prefix(target)}{_HOST}-{os.getpid()}-{token}.tmp{target.suffix}"
    )


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ``target`` left by killed runs of this host; never a live one."""
    target = Path(target)
    prefix = _temp_prefix(target)
    removed = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        host, _, rest = name[len(prefix):].partition("-")
        pid = rest.partition("-")[0]
        if host != _HOST or not pid.isdigit() or _alive(int(pid)):
            continue
        path = target.parent / name
        try:
            _remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def _remove(path: Path) -> None:
    """Unlink a file or link, or remove a folder tree (a COG work folder)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask (read from /proc where it can be, which changes nothing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open_to_umask(path: Path) -> None:
    """Give ``path`` at least the mode a newly created file gets (0666 & ~umask): safetensors
    and mkstemp create 0600 files, which other users (cluster workers) could not read."""
    mode = os.stat(path).st_mode & 0o7777
    wanted = mode | (0o666 & ~_umask())
    if wanted != mode:
        os.chmod(path, wanted)


def publish(tmp: str | os.PathLike, target: str | os.PathLike, *, overwrite: bool) -> None:
    """Move the finished ``tmp`` onto ``target`` atomically. Without ``overwrite`` the target is
    created only if absent (a hard link fails on an existing name), so of two runs racing for
    one new output exactly one wins; with it the last finished run replaces the file whole."""
    tmp, target = Path(tmp), Path(target)
    try:
        _fsync(tmp)  # a full disk may surface only here (delayed allocation, NFS)
    except OSError as exc:
        raise write_error(target, exc) from exc
    _open_to_umask(tmp)
    try:
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
                tmp.unlink()
            except FileExistsError:
                raise NdgeoError(f"output {target} exists (written by another run meanwhile); "
                                 "use --overwrite") from None
            except OSError:  # file systems without hard links: check, then rename
                if target.exists():
                    raise NdgeoError(f"output {target} exists; use --overwrite") from None
                os.replace(tmp, target)
    except NdgeoError:
        raise
    except OSError as exc:  # a name too long, a target made read-only meanwhile, ...
        raise write_error(target, exc) from exc
    PUBLISHED.append(target)


#: Every output this process has published, in order (an interrupted command says which).
PUBLISHED: list[Path] = []


@contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """A hidden temporary path beside ``path``, published onto it only if the block succeeds.

    The suffix is kept (GDAL picks drivers by extension); nothing is created, so any writer can
    open the name itself. Stale temporaries of ``path`` from killed runs are removed first. On
    an exception (or interrupt) the temporary file and its sidecars are removed and ``path`` is
    untouched. Every ndgeo output goes through here (:func:`publish`).
    """
    target = Path(path)
    remove_stale_temporaries(target)
    tmp = temp_path(target)
    try:
        yield tmp
        publish(tmp, target, overwrite=overwrite)
    except NdgeoError:
        raise
    except Exception as exc:  # any writer's full disk (OSError, pyogrio, safetensors): one line
        if _is_full_disk(exc) or _out_of_space(tmp):
            raise write_error(target, _NO_SPACE) from exc
        raise
    finally:
        _remove_temporary(tmp)


_FULL_DISK = ("no space left", "file too large", "disk quota", "write error", "enospc", "efbig",
              "io error writing", "seek error", "free disk space")


def _chain(cause: object) -> list[object]:
    """``cause`` and the exceptions it was raised from (rasterio says "Write failed. See
    previous exception for details."; GDAL's own message is the cause)."""
    chain, seen = [], set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        chain.append(cause)
        cause = getattr(cause, "__cause__", None) or getattr(cause, "__context__", None)
    return chain


def _causes(cause: object) -> list[str]:
    """The non-empty texts of :func:`_chain`."""
    texts = (" ".join(str(c).split()) for c in _chain(cause))
    return [t for t in texts if t]


def _temporary_files(tmp: Path) -> list[Path]:
    """``tmp`` and every sidecar a writer made beside it (``.aux.xml``, SQLite's
    ``-journal``/``-wal``, a COG work folder): all names that start with the temporary's."""
    stem = tmp.name[: -len(tmp.suffix)] if tmp.suffix else tmp.name
    try:
        return [tmp.parent / n for n in os.listdir(tmp.parent) if n.startswith(stem)]
    except OSError:
        return []


def _remove_temporary(tmp: Path) -> None:
    """Remove :func:`_temporary_files` of ``tmp``."""
    for path in _temporary_files(tmp):
        with suppress(FileNotFoundError):
            _remove(path)


_NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
#: How close to a full disk or to the file size limit a failed write counts as "no space": a
#: writer whose library hides the errno (SQLite under pyogrio says "no such table") fails
#: within one write of the limit.
_SPACE_MARGIN = 1 << 20


def _out_of_space(tmp: Path) -> bool:
    """Whether the file system of ``tmp`` is (nearly) full or ``tmp`` reached the process's
    file size limit (RLIMIT_FSIZE): the likely cause of a write that failed without saying."""
    try:
        stats = os.statvfs(tmp.parent)
        if stats.f_bavail * stats.f_frsize < _SPACE_MARGIN:
            return True
    except (OSError, AttributeError):
        pass
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return False
    if limit == resource.RLIM_INFINITY:
        return False
    try:
        sizes = [path.stat().st_size for path in _temporary_files(tmp)]
    except OSError:
        return False
    return any(size + _SPACE_MARGIN >= limit for size in sizes)


def _is_full_disk(cause: object) -> bool:
    if any(getattr(c, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
           for c in _chain(cause)):
        return True
    return any(word in text.lower() for text in _causes(cause) for word in _FULL_DISK)


def write_error(target: str | os.PathLike, cause: object) -> NdgeoError:
    """One-line NdgeoError for a failed write of ``target``, naming a full disk as such (a
    full disk, a quota or a file size limit: ENOSPC, EDQUOT, EFBIG, or GDAL's text for them)."""
    texts = _causes(cause)
    if _is_full_disk(cause):
        return NdgeoError(f"cannot write {target}: no space left on the device (or file size "
                          f"limit reached); the file was not written")
    return NdgeoError(f"cannot write {target}: {texts[-1] if texts else 'unknown error'}; "
                      "the file was not written")


class _GdalFailures(logging.Filter):
    """Collects the GDAL failures reported while a :func:`gdal_errors_raised` block runs.

    GDAL reports a failed write or close through its error handler only: closing a GTiff on a
    full disk raises nothing. rasterio (1.4) passes CE_Failure on to its loggers
    ``rasterio._env`` / ``rasterio._err`` at level INFO as ``GDAL signalled an error: err_no=..,
    msg=..`` (so with the default WARNING level the record is not even made). While a block is
    open those two loggers are set to INFO and this filter takes the failures of the block's
    thread; it lets a record through to the handlers only when the user's level would have
    shown it, so nothing new is printed. libtiff's own I/O errors (``_tiffWriteProc: No space
    left on device``) bypass GDAL and print to stderr; :func:`_capture_libtiff_errors` routes
    them here too.
    """

    LOGGERS = ("rasterio._env", "rasterio._err")

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.active: dict[int, list[str]] = {}
        self.levels: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        found = self.active.get(record.thread)
        if found is not None and str(record.msg).startswith("GDAL signalled an error"):
            args = record.args if isinstance(record.args, tuple) else ()
            found.append(str(args[-1]) if args else record.getMessage())
        return record.levelno >= logging.getLogger("rasterio").getEffectiveLevel()

    def add(self, message: str) -> bool:
        """Record a message of the current thread; False when no block collects there."""
        found = self.active.get(threading.get_ident())
        if found is None:
            return False
        found.append(message)
        return True

    @contextmanager
    def collect(self) -> Iterator[list[str]]:
        ident, found = threading.get_ident(), []
        with self.lock:
            outer = self.active.get(ident)
            self.active[ident] = found
            if len(self.active) == 1 and outer is None:
                for name in self.LOGGERS:
                    logger = logging.getLogger(name)
                    self.levels[name] = logger.level
                    logger.setLevel(min(logging.INFO, logger.getEffectiveLevel()))
                    logger.addFilter(self)
        try:
            yield found
        finally:
            with self.lock:
                if outer is None:
                    del self.active[ident]
                else:
                    outer.extend(found)
                    self.active[ident] = outer
                if not self.active:
                    for name, level in self.levels.items():
                        logger = logging.getLogger(name)
                        logger.removeFilter(self)
                        logger.setLevel(level)
                    self.levels.clear()


_FAILURES = _GdalFailures()
_LIBTIFF_HANDLER = None


def _capture_libtiff_errors() -> None:
    """Route libtiff's fallback error handler (it prints ``_tiffWriteProc: File too large.``
    straight to stderr) into the collecting block, or to the debug log outside one."""
    global _LIBTIFF_HANDLER
    if _LIBTIFF_HANDLER is not None:
        return
    import ctypes
    import platform

    lib = _gdal_library()
    if lib is None or platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        _LIBTIFF_HANDLER = False
        return
    try:
        libc = ctypes.CDLL(None)
        vsnprintf = libc.vsnprintf
        vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        set_handler = lib.TIFFSetErrorHandler
        set_handler.restype = ctypes.c_void_p
        set_handler.argtypes = [ctypes.c_void_p]
    except (AttributeError, OSError):
        _LIBTIFF_HANDLER = False
        return

    def handler(module, fmt, args):
        buffer = ctypes.create_string_buffer(1024)
        vsnprintf(buffer, len(buffer), fmt, args)
        text = f"{(module or b'libtiff').decode(errors='replace')}: " \
               f"{buffer.value.decode(errors='replace')}"
        if not _FAILURES.add(text):
            logging.getLogger("ndgeo.gdal").debug(text)

    _LIBTIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p,
                                        ctypes.c_void_p)(handler)
    set_handler(ctypes.cast(_LIBTIFF_HANDLER, ctypes.c_void_p))


class GdalErrors:
    """What :func:`gdal_errors_raised` yields: ``check()`` raises the failures so far."""

    def __init__(self, target: str | os.PathLike, found: list[str]) -> None:
        self.target, self.found = target, found

    def check(self) -> None:
        if self.found:
            full = [m for m in self.found if any(w in m.lower() for w in _FULL_DISK)]
            raise write_error(self.target, (full or self.found)[0])


@contextmanager
def gdal_errors_raised(target: str | os.PathLike) -> Iterator[GdalErrors]:
    """Raise a :func:`write_error` for ``target`` if GDAL (or libtiff) reported a failure in
    this thread inside the block; ``check()`` on the yielded object raises earlier."""
    _capture_libtiff_errors()
    with _FAILURES.collect() as found:
        errors = GdalErrors(target, found)
        yield errors
    errors.check()


def verify_raster(path: str | os.PathLike, target: str | os.PathLike) -> None:
    """Reopen a finished raster and decode its last block: a file truncated by a failed write
    or close is refused before it is published as ``target``."""
    try:
        with rasterio.open(path) as src:
            h, w = src.block_shapes[0]
            row, col = ((src.height - 1) // h) * h, ((src.width - 1) // w) * w
            src.read(window=Window(col, row, min(w, src.width - col), min(h, src.height - row)))
    except (OSError, rasterio.errors.RasterioError) as exc:
        raise write_error(target, exc) from exc


def check_output(
    path: str | os.PathLike, *, overwrite: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
) -> str:
    """Refuse an existing OUT (unless ``overwrite``), an unwritable directory or an OUT that is
    one of the command's ``inputs`` (same file, also through a link; whatever the flags);
    return the absolute path."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    for item in inputs:
        name = os.fspath(item)
        if os.path.exists(path) and os.path.exists(name) and os.path.samefile(path, name):
            raise NdgeoError(f"output {path} is the input {name}; choose another name")
    if os.path.isdir(path):
        raise NdgeoError(f"output {path} is a directory")
    if len(os.fsencode(os.path.basename(path))) > name_limit(directory or "."):
        raise NdgeoError(f"output name {os.path.basename(path)[:40]}... is longer than the "
                         f"{name_limit(directory or '.')} bytes its filesystem allows")
    if os.path.exists(path) and not overwrite:
        raise NdgeoError(f"output {path} exists; use --overwrite")
    if not os.path.isdir(directory):
        raise NdgeoError(f"output directory {directory} does not exist")
    try:  # A real probe: os.access says yes to root even on read-only mounts.
        fd, probe = tempfile.mkstemp(prefix=".ndgeo-probe-", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise NdgeoError(f"output directory {directory} is not writable: {exc}") from exc
    return path


@dataclass(frozen=True)
class ClassInfo:
    """One class of a class raster: its pixel value, name and RGB colour."""

    value: int
    name: str
    color: tuple[int, int, int] = (128, 128, 128)


#: Tag holding a class raster's names, JSON ``{"1": "crop", ...}`` (read back by
#: :func:`read_classes`).
CLASSES_TAG = "CLASSES"


def classes_tag(classes: Sequence[ClassInfo]) -> dict[str, str]:
    """The ``CLASSES`` tag of ``classes``, JSON ``{"value": "name"}``."""
    return {CLASSES_TAG: json.dumps({str(c.value): c.name for c in classes})}


def class_colormap(classes: Sequence[ClassInfo], nodata: int | None = 0) -> dict:
    """rasterio colour map of a class raster (nodata transparent)."""
    cmap = {} if nodata is None else {int(nodata): (0, 0, 0, 0)}
    cmap.update({c.value: (*c.color, 255) for c in classes})
    return cmap


def read_classes(src: rasterio.DatasetReader) -> tuple[list[ClassInfo], list[str]]:
    """The classes a class raster declares (``CLASSES`` tag, colour table), and notes on what
    could not be read. Values without a colour get grey."""
    notes: list[str] = []
    tag = src.tags().get(CLASSES_TAG)
    names: dict[int, str] = {}
    if tag:
        try:
            names = {int(k): str(v) for k, v in json.loads(tag).items()}
        except (ValueError, AttributeError):
            notes.append(f"ignored unreadable {CLASSES_TAG} tag of {src.name}: {tag[:60]!r}")
    try:
        cmap = src.colormap(1)
    except ValueError:
        cmap = {}
    return [ClassInfo(v, n, tuple(cmap.get(v, (128, 128, 128, 255))[:3]))
            for v, n in sorted(names.items())], notes


class GeoTIFFWriter:
    """Context manager writing one GeoTIFF window by window, atomically.

    >>> with GeoTIFFWriter("out.tif", width=w, height=h, count=1, dtype="uint8",
    ...                    crs=crs, transform=transform, nodata=255) as dst:
    ...     dst.write(block, Window(0, 0, 256, 256))

    ``tags`` are dataset tags, ``band_tags`` one dict per band, ``colormap`` a rasterio colour
    map ``{value: (r, g, b, a)}`` for band 1; ``classes`` writes the class-raster convention
    instead (colour table with nodata transparent, ``CLASSES`` tag, read by
    :func:`read_classes`). With ``cog=True`` the finished
    file is converted to a Cloud Optimized GeoTIFF (overviews with ``overview_resampling``:
    default ``nearest`` for integer or colour-mapped outputs, ``average`` for floats).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        width: int,
        height: int,
        count: int,
        dtype: str,
        crs: object = None,
        transform: object = None,
        nodata: float | None = None,
        descriptions: Sequence[str | None] | None = None,
        tags: Mapping[str, object] | None = None,
        band_tags: Sequence[Mapping[str, object]] | None = None,
        colormap: Mapping[int, Sequence[int]] | None = None,
        classes: Sequence[ClassInfo] | None = None,
        creation_options: Mapping[str, object] | None = None,
        block_size: int = 256,
        overwrite: bool = False,
        cog: bool = False,
        overview_resampling: str | None = None,
    ) -> None:
        self.path = check_output(path, overwrite=overwrite)
        if nodata is not None:
            check_nodata(nodata, dtype, what="output nodata")
        if descriptions is not None and len(descriptions) != count:
            raise ValueError(f"{len(descriptions)} descriptions for {count} bands")
        if band_tags is not None and len(band_tags) != count:
            raise ValueError(f"{len(band_tags)} band tag dicts for {count} bands")
        self.profile = creation_profile(dtype, creation_options, block_size=block_size)
        self.meta = dict(
            driver="GTiff", width=width, height=height, count=count, dtype=dtype,
            crs=crs, transform=transform, nodata=nodata,
        )
        self.descriptions = descriptions
        self.tags = dict(tags or {})
        if classes:
            colormap = class_colormap(classes, None if nodata is None else int(nodata))
            self.tags.update(classes_tag(classes))
        self.band_tags = band_tags
        self.colormap = colormap
        self.cog = cog
        if overview_resampling is None:
            integer = np.dtype(dtype).kind in "iub"
            overview_resampling = "nearest" if integer or colormap else "average"
        self.overview_resampling = overview_resampling
        self.overwrite = overwrite
        self._stack = ExitStack()
        self._temp: str | None = None
        self._errors: GdalErrors | None = None
        self._dst: rasterio.io.DatasetWriter | None = None

    @property
    def temp_path(self) -> str:
        """The hidden temporary file the data goes to until it is published."""
        if self._temp is None:
            raise RuntimeError("GeoTIFFWriter.temp_path outside its with-block")
        return self._temp

    def __enter__(self) -> GeoTIFFWriter:
        try:
            tmp = self._stack.enter_context(atomic_path(self.path, overwrite=self.overwrite))
            self._temp = str(tmp)
            self._errors = self._stack.enter_context(gdal_errors_raised(self.path))
            self._dst = rasterio.open(self._temp, "w", **self.meta, **self.profile)
            self._describe(self._dst)
        except BaseException:
            self._close_dataset()
            if not self._stack.__exit__(*sys.exc_info()):
                raise
        return self

    def _describe(self, dst: rasterio.io.DatasetWriter) -> None:
        for i, text in enumerate(self.descriptions or [], start=1):
            if text:
                dst.set_band_description(i, str(text))
        if self.tags:
            dst.update_tags(**{str(k): str(v) for k, v in self.tags.items()})
        for i, band in enumerate(self.band_tags or [], start=1):
            if band:
                dst.update_tags(i, **{str(k): str(v) for k, v in band.items()})
        if self.colormap:
            dst.write_colormap(1, {int(k): tuple(v) for k, v in self.colormap.items()})

    def write(self, array: np.ndarray, window: Window) -> None:
        """Write a (count, h, w) array at ``window`` (cast to the output dtype)."""
        if self._dst is None:
            raise RuntimeError("GeoTIFFWriter.write outside its with-block")
        expected = (self.meta["count"], int(window.height), int(window.width))
        if array.shape != expected:
            raise ValueError(f"block of shape {array.shape} for window {window}; need {expected}")
        try:
            self._dst.write(np.asarray(array, dtype=self.meta["dtype"]), window=window)
        except (OSError, rasterio.errors.RasterioError) as exc:
            self._check_errors()
            raise write_error(self.path, exc) from exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            self._close_dataset()
            if exc_type is None:
                self._check_errors()  # a failed close (full disk) only logs
                verify_raster(self._temp, self.path)
                if self.cog:
                    self._convert_to_cog()
                    self._check_errors()
                    verify_raster(self._temp, self.path)
        except BaseException:
            if not self._stack.__exit__(*sys.exc_info()):
                raise
            return False
        return bool(self._stack.__exit__(exc_type, exc, tb))

    def _check_errors(self) -> None:
        if self._errors is not None:
            self._errors.check()

    def _close_dataset(self) -> None:
        if self._dst is not None:
            dst, self._dst = self._dst, None
            try:
                dst.close()
            except (OSError, rasterio.errors.RasterioError) as exc:
                self._check_errors()
                raise write_error(self.path, exc) from exc

    def _convert_to_cog(self) -> None:
        """Rewrite the finished temp GTiff as a COG (in a hidden work dir beside OUT)."""
        from rio_cogeo.cogeo import cog_translate
        from rio_cogeo.profiles import cog_profiles

        profile = cog_profiles.get("deflate")
        profile.update({k.lower(): v for k, v in self.profile.items() if k != "TILED"})
        workdir = self._temp[: -len(".tif")] + ".cog"
        os.mkdir(workdir)
        try:
            cog_path = os.path.join(workdir, "cog.tif")
            cog_translate(
                self._temp,
                cog_path,
                profile,
                overview_resampling=self.overview_resampling,
                forward_band_tags=True,
                in_memory=False,
                quiet=True,
            )
            os.replace(cog_path, self._temp)
        except (OSError, rasterio.errors.RasterioError) as exc:
            self._check_errors()
            raise write_error(self.path, exc) from exc
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def write_raster(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    crs: object = None,
    transform: object = None,
    **options: object,
) -> str:
    """Write a whole in-memory (count, h, w) array with :class:`GeoTIFFWriter`; return OUT."""
    if array.ndim == 2:
        array = array[None]
    count, height, width = array.shape
    with GeoTIFFWriter(
        path, width=width, height=height, count=count, dtype=str(array.dtype),
        crs=crs, transform=transform, **options,
    ) as dst:
        dst.write(array, Window(0, 0, width, height))
    return dst.path


#: Marks the sidecars :func:`write_class_sidecars` writes (so stale ones can be recognised).
SIDECAR_MARK = "written by ndgeo: class legend"


def class_sidecar_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """The GDAL PAM sidecar (``OUT.aux.xml``) and QGIS style (``OUT.qml``) of a class raster."""
    path = Path(path)
    return path.with_name(path.name + ".aux.xml"), path.with_suffix(".qml")


def write_class_sidecars(path: str | os.PathLike, classes: Sequence[ClassInfo]) -> list[Path]:
    """Legend files beside the class raster ``path``, each written atomically:

    - ``OUT.aux.xml``: GDAL category names and a thematic raster attribute table (value, class
      name, RGBA), which ArcGIS and GDAL-based tools show as the legend;
    - ``OUT.qml``: a QGIS paletted style with the class names and colours, which QGIS loads
      with the layer.
    """
    from xml.sax.saxutils import escape, quoteattr

    aux, qml = class_sidecar_paths(path)
    ordered = sorted(classes, key=lambda c: c.value)
    by_value = {c.value: c for c in ordered}
    top = max(by_value, default=0)
    categories = "".join(
        f"        <Category>{escape(by_value[v].name) if v in by_value else ''}</Category>\n"
        for v in range(top + 1)
    )
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8),
              ("Alpha", 0, 9)]  # (name, GDAL field type, usage): GFU_MinMax, Name, RGBA
    defs = "".join(f'      <FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type>'
                   f"<Usage>{u}</Usage></FieldDefn>\n" for i, (n, t, u) in enumerate(fields))
    rows = "".join(
        f'      <Row index="{i}"><F>{c.value}</F><F>{escape(c.name)}</F>'
        + "".join(f"<F>{v}</F>" for v in (*c.color, 255)) + "</Row>\n"
        for i, c in enumerate(ordered)
    )
    aux_text = (
        f"<PAMDataset>\n  <!-- {SIDECAR_MARK} -->\n  <PAMRasterBand band=\"1\">\n"
        f"    <CategoryNames>\n{categories}    </CategoryNames>\n"
        f'    <GDALRasterAttributeTable tableType="thematic">\n{defs}{rows}'
        "    </GDALRasterAttributeTable>\n  </PAMRasterBand>\n</PAMDataset>\n"
    )
    entries = "".join(
        f'        <paletteEntry value="{c.value}" color="#{c.color[0]:02x}{c.color[1]:02x}'
        f'{c.color[2]:02x}" alpha="255" label={quoteattr(c.name)}/>\n' for c in ordered
    )
    qml_text = (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.28" styleCategories="AllStyleCategories">\n'
        f"  <!-- {SIDECAR_MARK} -->\n  <pipe>\n"
        '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" '
        'nodataColor="">\n      <rasterTransparency/>\n'
        f"      <colorPalette>\n{entries}      </colorPalette>\n"
        "    </rasterrenderer>\n"
        '    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>\n'
        '    <huesaturation saturation="0" colorizeOn="0" grayscaleMode="0"/>\n'
        '    <rasterresampler maxOversampling="2"/>\n  </pipe>\n  <blendMode>0</blendMode>\n'
        "</qgis>\n"
    )
    written = []
    for target, text in ((aux, aux_text), (qml, qml_text)):
        if len(os.fsencode(target.name)) > name_limit(target.parent):
            logging.getLogger("ndgeo").warning(
                "no %s legend beside %s: its name would exceed the filesystem's limit (the class "
                "names and colours are still in the GeoTIFF)",
                ".aux.xml" if target.name.endswith(".aux.xml") else target.suffix, path)
            continue
        with atomic_path(target, overwrite=True) as tmp:
            try:
                tmp.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise write_error(target, exc) from exc
        written.append(target)
    return written


def publish_class_legend(path: str | os.PathLike, classes: Sequence[ClassInfo] | None
                         ) -> list[Path]:
    """After a run: class maps get their legend beside them (:func:`write_class_sidecars`);
    other outputs drop a legend an earlier file at ``path`` left (:func:`remove_class_sidecars`).
    """
    if classes:
        return write_class_sidecars(path, classes)
    remove_class_sidecars(path)
    return []


def remove_class_sidecars(path: str | os.PathLike) -> None:
    """Remove legend sidecars that :func:`write_class_sidecars` left for an earlier file at
    ``path`` (after it was overwritten by an output that is not a class map)."""
    for sidecar in class_sidecar_paths(path):
        try:
            if SIDECAR_MARK in sidecar.read_text(encoding="utf-8", errors="replace")[:300]:
                sidecar.unlink()
        except OSError:
            pass

"""GDAL configuration options (``--config KEY=VALUE``): checked by type before any pixel is read.

GDAL takes any text for any option and silently falls back to a default on a value it cannot
parse (``GDAL_CACHEMAX=abc`` is a 0 MB cache), so ndgeo checks the options it and its users
commonly set; keys it does not list pass unchanged (GDAL has hundreds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ndgeo.errors import NdgeoError

_INTEGER = r"[+-]?\d+"
_BOOLEAN = r"(?i:yes|no|true|false|on|off|1|0)"
#: ``GDAL_CACHEMAX``: MB (or bytes when >= 100000), ``N%`` of the RAM, or with a unit.
_CACHE = r"\d+(?:\.\d+)?\s*(?:%|(?i:[kmg]b?|b))?"

#: ``KEY: (regular expression of a valid value, what it must be)``.
KNOWN: dict[str, tuple[str, str]] = {
    "GDAL_CACHEMAX": (_CACHE, "a size in MB, N%, or with a unit (e.g. 512, 10%, 1GB)"),
    "GDAL_NUM_THREADS": (r"\d+|(?i:all_cpus)", "an integer or ALL_CPUS"),
    "GDAL_DISABLE_READDIR_ON_OPEN": (r"(?i:yes|no|true|false|on|off|empty_dir)",
                                     "YES, NO or EMPTY_DIR"),
    "GDAL_HTTP_TIMEOUT": (_INTEGER, "an integer (seconds)"),
    "GDAL_HTTP_CONNECTTIMEOUT": (_INTEGER, "an integer (seconds)"),
    "GDAL_HTTP_MAX_RETRY": (_INTEGER, "an integer"),
    "GDAL_HTTP_RETRY_DELAY": (r"\d+(?:\.\d+)?", "a number (seconds)"),
    "GDAL_HTTP_MULTIRANGE": (r"(?i:yes|no|serial|single_get)", "YES, NO, SERIAL or SINGLE_GET"),
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": (_BOOLEAN, "YES or NO"),
    "GDAL_HTTP_VERSION": (r"1\.0|1\.1|2|2TLS|2PRIOR_KNOWLEDGE", "1.0, 1.1, 2, 2TLS or "
                                                                "2PRIOR_KNOWLEDGE"),
    "GDAL_HTTP_UNSAFESSL": (_BOOLEAN, "YES or NO"),
    "GDAL_TIFF_INTERNAL_MASK": (_BOOLEAN, "YES or NO"),
    "GDAL_PAM_ENABLED": (_BOOLEAN, "YES or NO"),
    "GTIFF_DIRECT_IO": (_BOOLEAN, "YES or NO"),
    "GTIFF_VIRTUAL_MEM_IO": (r"(?i:yes|no|true|false|on|off|if_enough_ram)",
                             "YES, NO or IF_ENOUGH_RAM"),
    "CPL_DEBUG": (_BOOLEAN + r"|\w+", "ON, OFF or a driver name"),
    "CPL_VSIL_CURL_USE_HEAD": (_BOOLEAN, "YES or NO"),
    "CPL_VSIL_CURL_CHUNK_SIZE": (r"\d+", "an integer (bytes)"),
    "CPL_VSIL_CURL_CACHE_SIZE": (r"\d+", "an integer (bytes)"),
    "VSI_CACHE": (_BOOLEAN, "YES or NO"),
    "VSI_CACHE_SIZE": (r"\d+", "an integer (bytes)"),
    "AWS_NO_SIGN_REQUEST": (_BOOLEAN, "YES or NO"),
    "AWS_VIRTUAL_HOSTING": (_BOOLEAN, "YES or NO"),
    "AWS_HTTPS": (_BOOLEAN, "YES or NO"),
}
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def check_config_options(options: Mapping[str, Any], ram_bytes: float | None = None
                         ) -> dict[str, Any]:
    """Refuse (one line) a malformed key or a value of the wrong type for an option GDAL reads;
    return the options with ``GDAL_CACHEMAX`` as whole MB (rasterio's ``Env`` takes only an
    integer there)."""
    checked = dict(options)
    for key, value in options.items():
        if not _KEY.fullmatch(str(key)):
            raise NdgeoError(f"--config {key}={value}: {key!r} is not a GDAL configuration "
                             "option name (letters, digits and _)")
        pattern, what = KNOWN.get(str(key).upper(), (None, ""))
        if pattern is not None and not re.fullmatch(pattern, str(value).strip()):
            raise NdgeoError(f"--config {key}={value}: {key} must be {what} "
                             "(see https://gdal.org/user/configoptions.html)")
        if str(key).upper() == "GDAL_CACHEMAX" and not isinstance(value, int):
            megabytes = cache_megabytes(value, ram_bytes)
            if megabytes is None:
                raise NdgeoError(f"--config {key}={value}: the memory size is not known here; "
                                 "give MB")
            checked[key] = max(1, round(megabytes))
    return checked


def cache_megabytes(value: Any, ram_bytes: float | None = None) -> float | None:
    """``GDAL_CACHEMAX`` in MB as GDAL reads it (None for a share of RAM that is not known)."""
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%|[kKmMgG]?[bB]?)?", text)
    if match is None:
        return None
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    if unit == "%":
        return None if ram_bytes is None else ram_bytes * number / 100 / 2**20
    factor = {"": None, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20,
              "G": 2**30, "GB": 2**30}[unit]
    if factor is None:  # a bare number: MB below 100000, bytes above
        return number if number < 100_000 else number / 2**20
    return number * factor / 2**20

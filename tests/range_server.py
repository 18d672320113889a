"""A loopback HTTP server with Range support over one folder, run as its own process by the
tests (``python tests/range_server.py FOLDER`` prints its port): ``rasterio.open`` holds the GIL
while GDAL waits for a response, so a server thread in the test process could never answer."""

from __future__ import annotations

import http.server
import re
import sys
from pathlib import Path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support (``http.server`` alone ignores ``Range``)."""

    def log_message(self, *args) -> None:  # quiet test output
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return None
        size = path.stat().st_size
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, end = (0, size - 1) if not match else (
            int(match.group(1)), int(match.group(2) or size - 1))
        end = min(end, size - 1)
        self.send_response(206 if match else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        f = path.open("rb")
        f.seek(start)
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile) -> None:
        outputfile.write(source.read(self._remaining))


def main(folder: str) -> None:
    def handler(*args, **kwargs):
        return RangeHandler(*args, directory=folder, **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1])

"""The web view's files: `GET /` is server/trackd/server/web/index.html and
`GET /static/<path>` a file under server/trackd/server/web/ (installed with the package).

No directory listing, no hidden file, no path out of the folder (a `.` or `..` segment, a
backslash, NUL or a symlink leading out is 404). Every answer is `Cache-Control:
no-cache` with an ETag (the SHA-256 of the bytes): a browser revalidates each time and
gets 304 while the file is unchanged, so a new version is picked up at once. Every answer
carries a strict Content-Security-Policy (scripts, styles and connections to trackd's own
origin only; no framing), `X-Content-Type-Options: nosniff` and `Referrer-Policy:
no-referrer`. Public: the pages sign in through /api/view/session."""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path

from aiohttp import web

from trackd.server.errors import NotFound
from trackd.server.http.front import Route

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Types by extension, fixed here rather than taken from the host's mime.types.
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
# A web asset larger than this is not served (they are small; this bounds the cache).
FILE_BYTES_MAX = 32 * 1024 * 1024


class WebFiles:
    """Serves the files of a folder (WEB_ROOT by default), with their ETags cached by
    (path, modification time, size)."""

    def __init__(self, root: Path = WEB_ROOT) -> None:
        self.root = root.resolve()
        self._cache: dict[Path, tuple[int, int, bytes, str]] = {}

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/", self.index, ""),
            Route("GET", "/static/{path:.+}", self.static, ""),
        ]

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._serve(request, "index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return self._serve(request, request.match_info["path"])

    def _file(self, rel: str) -> Path:
        """The file `rel` names under the root; NotFound for anything else."""
        missing = NotFound(f"no file {rel[:200]!r} in the web view", metadata={"path": rel[:200]})
        segments = rel.split("/")
        if any(s in ("", ".", "..") or s.startswith(".") for s in segments):
            raise missing
        if "\\" in rel or "\x00" in rel:
            raise missing
        try:
            path = self.root.joinpath(*segments).resolve()
        except (OSError, ValueError, RuntimeError):
            raise missing from None
        if not path.is_relative_to(self.root) or not path.is_file():
            raise missing
        return path

    def _read(self, path: Path) -> tuple[bytes, str]:
        stat = path.stat()
        cached = self._cache.get(path)
        if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
            return cached[2], cached[3]
        if stat.st_size > FILE_BYTES_MAX:
            raise NotFound(f"{path.name} is too large to serve", metadata={})
        data = path.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        self._cache[path] = (stat.st_mtime_ns, stat.st_size, data, etag)
        return data, etag

    def _serve(self, request: web.Request, rel: str) -> web.StreamResponse:
        path = self._file(rel)
        try:
            data, etag = self._read(path)
        except OSError:
            raise NotFound(f"no file {rel[:200]!r} in the web view", metadata={}) from None
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": etag}
        if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
            return web.Response(status=304, headers=headers)
        kind = _TYPES.get(path.suffix.lower()) or (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        headers["Content-Type"] = kind
        return web.Response(body=data, headers=headers)

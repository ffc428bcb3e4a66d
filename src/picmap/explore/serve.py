"""Serving the explorer page on localhost: the page itself and nothing else of the run folder.

The page is one self-contained file (its images, script and styles are inlined), so the run's
model, checkpoint, settings and the folder listing have no reason to be reachable.
"""

from __future__ import annotations

import http.server
from pathlib import Path
from urllib.parse import urlsplit


def page_only_handler(page: Path) -> type[http.server.BaseHTTPRequestHandler]:
    """A request handler that answers ``/`` and ``/<page name>`` with ``page``; 404 otherwise.

    The file is read at each request, so a page that `picmap evaluate` rewrites is served new.
    """
    served_paths = {"/", f"/{page.name}"}

    class PageOnly(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def _answer(self, with_body: bool) -> None:
            if urlsplit(self.path).path not in served_paths:
                self.send_error(404, "only the explorer page is served")
                return
            try:
                body = page.read_bytes()
            except OSError:
                self.send_error(404, "the explorer page is gone")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if with_body:
                self.wfile.write(body)

    return PageOnly

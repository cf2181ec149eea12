#!/usr/bin/env python3
"""An OTLP/HTTP traces sink for bench/run.py: answers 200 with an empty body to POST /v1/traces
(an empty ExportTraceServiceResponse, i.e. everything accepted) and discards the spans.

It runs as its own process, so its CPU is not counted against the courier it serves; the bench
counts courier's export work (its batch thread and the exporter's client) and nothing more.
Usage: python3 bench/otlp_sink.py PORT  (listens on 127.0.0.1 only).
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as an OTLP exporter expects

    def do_POST(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0], 16)
                self.rfile.read(size + 2)  # the chunk and its CRLF
                if size == 0:
                    break
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?", 1)[0] == "/v1/traces":
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
        else:
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)
    server.daemon_threads = True
    server.serve_forever()

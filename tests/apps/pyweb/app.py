"""A dependency-free web app for the scheduler and router tests: answers with what it sees."""

import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "one"
SHOWN = ("PORT", "BAE_APP", "BAE_DEPLOYMENT", "BAE_UNIT", "DYNO", "BAE_RELEASE", "HOME", "GREETING")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/headers"):
            data = dict(self.headers.items())
        else:
            data = {k: os.environ.get(k) for k in SHOWN}
            data.update(version=VERSION, uid=os.getuid(), host=socket.gethostname(), path=self.path)
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (os.environ.get("BAE_UNIT"), fmt % args))
        sys.stdout.flush()


ThreadingHTTPServer.daemon_threads = True
print(f"listening on {os.environ['PORT']}", flush=True)
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()

"""A dependency-free web app for the scheduler and router tests: answers with what it sees."""

import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "one"
SHOWN = ("PORT", "BAE_APP", "BAE_DEPLOYMENT", "BAE_UNIT", "DYNO", "BAE_RELEASE", "HOME", "GREETING")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def websocket_echo(self):
        """A minimal RFC 6455 echo: text frames back as they came, until a close frame."""
        self.close_connection = True
        accept = base64.b64encode(hashlib.sha1(
            self.headers["Sec-WebSocket-Key"].encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                self.wfile.write(b"\x88\x00")
                return
            reply = f"echo from {os.environ.get('BAE_UNIT')}: ".encode() + data
            size = len(reply)
            header = bytes([0x81, size]) if size < 126 else bytes([0x81, 126]) + struct.pack(">H", size)
            self.wfile.write(header + reply)
            self.wfile.flush()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        body = json.dumps({"received": len(data), "unit": os.environ.get("BAE_UNIT")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket_echo()
        if self.path.startswith("/sleep/"):
            time.sleep(float(self.path.split("/")[2]))
        if self.path.startswith("/env/"):
            value = os.environ.get(self.path[len("/env/"):])
            body = json.dumps({"value": value}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
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


if "FAIL_ON" in os.environ and os.environ["FAIL_ON"] == os.environ.get("BAE_DEPLOYMENT"):  # breaks one deployment
    sys.exit(f"FAIL_ON={os.environ['FAIL_ON']}: refusing to start")
ThreadingHTTPServer.daemon_threads = True
print(f"listening on {os.environ['PORT']}", flush=True)
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()

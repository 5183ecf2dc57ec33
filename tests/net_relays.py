"""Real network middlemen for the S3 read path's tests: an HTTP proxy (CONNECT tunnels and absolute-form
forwarding, as corporate proxies do) and a TLS terminator (an https endpoint with a private CA in front of
SeaweedFS). Each records what passed through it; both relay real bytes to the real server."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy a -> b until either side closes."""
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Relay:
    """A listener on 127.0.0.1 that hands each accepted connection to `handle` in a thread."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.seen: list = []  # what each connection asked for first
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            conn.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the thread
        except OSError:
            pass
        self.sock.close()


class HttpProxy(_Relay):
    """`CONNECT host:port` opens a tunnel; `GET http://host:port/path` is forwarded as sent (the server accepts
    the absolute form). `seen` holds each connection's first request line."""

    def handle(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                conn.close()
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        self.seen.append(line)
        method, target, _ = line.split(" ", 2)
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up = socket.create_connection((host, int(port)))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
        else:
            u = urlsplit(target)
            up = socket.create_connection((u.hostname, u.port or 80))
            rest = head
        if rest:
            up.sendall(rest)
        threading.Thread(target=_pipe, args=(up, conn), daemon=True).start()
        _pipe(conn, up)


class TlsFront(_Relay):
    """https://localhost:PORT terminating TLS with a certificate from a private CA, relaying plain HTTP to
    `upstream` (host, port). `ca_pem` is the CA's certificate file (what AWS_CA_BUNDLE names)."""

    def __init__(self, workdir: Path, upstream: tuple):
        self.upstream = upstream
        self.ca_pem, cert, key = _make_certs(Path(workdir))
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as e:  # a client that does not trust our CA hangs up here
            self.seen.append(f"handshake failed: {type(e).__name__}")
            conn.close()
            return
        self.seen.append("tls")
        up = socket.create_connection(self.upstream)
        threading.Thread(target=_pipe, args=(up, tls), daemon=True).start()
        _pipe(tls, up)


def _make_certs(d: Path):
    """A private CA and a localhost certificate it signs (openssl CLI)."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert, ext = (d / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem", "ext"))
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=msca test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    run(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext),
    )  # fmt: skip
    return str(ca), str(cert), str(key)

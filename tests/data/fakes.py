"""Synthetic IDX datasets and a loopback HTTP mirror for the data tests."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from bnlab.data.idx import encode_idx, write_idx
from bnlab.data.registry import DatasetSpec, FileSpec, get_spec


def fake_arrays(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    return images, labels


def fake_files(n_train: int = 64, n_test: int = 32) -> dict[str, bytes]:
    """file name (with .gz) -> gzipped IDX bytes, for the four files of a dataset."""
    (tri, trl), (tei, tel) = fake_arrays(n_train, 1), fake_arrays(n_test, 2)
    spec = get_spec("fashion-mnist")
    tensors = {"train-images": tri, "train-labels": trl, "test-images": tei,
               "test-labels": tel}
    return {spec.files[k].name + ".gz": gzip.compress(encode_idx(t), mtime=0)
            for k, t in tensors.items()}


def write_fake_dataset(directory: Path, gz: bool = True, n_train: int = 64,
                       n_test: int = 32) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in fake_files(n_train, n_test).items():
        if gz:
            (directory / name).write_bytes(data)
        else:
            (directory / name[:-3]).write_bytes(gzip.decompress(data))
    return directory


def spec_for(files: dict[str, bytes], mirrors: tuple[str, ...]) -> DatasetSpec:
    """fashion-mnist's spec with the fake files' checksums and the given mirrors."""
    base = get_spec("fashion-mnist")
    new_files = {}
    for key, fs in base.files.items():
        data = files[fs.name + ".gz"]
        new_files[key] = FileSpec(fs.name, hashlib.md5(data).hexdigest(),
                                  hashlib.md5(gzip.decompress(data)).hexdigest())
    return replace(base, files=new_files, mirrors=mirrors, system_dirs=())


class Mirror:
    """Routes: path -> bytes; behaviours per path prefix: 'ok', '404', 'html', 'cut'."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.behaviour: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_once: set[str] = set()

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                mirror.requests.append((self.path, rng))
                prefix = self.path.split("/")[1]
                mode = mirror.behaviour.get(prefix, "ok")
                if mode == "404" or self.path not in mirror.routes:
                    self.send_error(404, "Not Found")
                    return
                if mode == "html":
                    body = b"<html><body>Service moved</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = mirror.routes[self.path]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if rng else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if mode == "cut" and self.path not in mirror.cut_once:
                    mirror.cut_once.add(self.path)
                    self.wfile.write(body[: len(body) // 2])  # then drop the connection
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Handler


@contextmanager
def serve(mirror: Mirror) -> Iterator[str]:
    """Run `mirror` on 127.0.0.1 on a free port; yield its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), mirror.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


__all__ = ["Mirror", "fake_arrays", "fake_files", "serve", "spec_for", "write_fake_dataset",
           "write_idx"]

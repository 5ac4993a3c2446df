"""Run ``ballistic serve`` as a child process (benchmarks, crash tests, scripted deployments)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["free_port", "ServerProcess"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``ballistic serve`` on 127.0.0.1:<port> with its data in ``data_dir``; output goes to ``log``."""

    def __init__(self, data_dir: Path, *, admin_key: str, port: int | None = None, workers: int = 1,
                 env: dict[str, str] | None = None, log: Path | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = admin_key
        self.workers = workers
        self.env = {**os.environ, "BALLISTIC_ADMIN_KEY": admin_key, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log = Path(log) if log else self.data_dir.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def _cmd(self) -> list[str]:
        exe = shutil.which("ballistic")
        base = [exe] if exe else [sys.executable, "-m", "api.cli"]
        return base + ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
                       "--data-dir", str(self.data_dir), "--log-level", "warning"]

    def start(self, timeout: float = 120.0) -> "ServerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.log, "ab")
        self.proc = subprocess.Popen(self._cmd(), env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        fh.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"server not ready after {timeout}s; log:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM and wait (graceful shutdown); SIGKILL if it does not stop in time."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, key: str | None = None, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": key or self.admin_key}, timeout=timeout)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""An S3-compatible server on localhost for tests: moto in server mode (`pip install "moto[server]"`).

    with MotoServer() as s3:                  # python -m moto.server behind a gate on a free port of 127.0.0.1
        os.environ.update(s3.env)             # what boto3 / s3fs read: endpoint and dummy credentials
        s3.create_bucket("artifacts")
        s3.stop(); s3.start()                 # the store unreachable, then back (its objects are kept)

Objects live in the moto process's memory only: nothing of an artifact written there is on disk.
Clients reach moto through a small TCP gate in this process; `stop()` closes the gate (new connections
are refused, open ones reset: what a client sees when the store is down or the path to it lost) while
moto keeps its objects, and `start()` opens it again on the same port.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import httpx

from tests.ports import free_port


class _Gate:
    """A TCP forwarder 127.0.0.1:port -> 127.0.0.1:target on its own event loop thread; closable."""

    def __init__(self, port: int, target: int):
        self.port, self.target = port, target
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self.loop.run_forever, name="s3-gate", daemon=True).start()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.writers.difference_update((writer, up_writer))

    async def _open(self):
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True)

    async def _close(self):
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()  # reset, not a graceful close
        self.writers.clear()
        await self.server.wait_closed()

    def open(self) -> None:
        self._call(self._open())

    def close(self) -> None:
        self._call(self._close())

    def shutdown(self) -> None:
        if self.server is not None and self.server.is_serving():
            self.close()
        self.loop.call_soon_threadsafe(self.loop.stop)


class MotoServer:
    """A moto S3 server subprocess behind a gate; `env` holds the variables a client needs to reach it."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        self._moto_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.gate: _Gate | None = None

    def __enter__(self) -> MotoServer:
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                      str(self._moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                httpx.get(f"http://127.0.0.1:{self._moto_port}/moto-api/", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("moto server did not answer within 60 s") from None
                time.sleep(0.2)
        self.gate = _Gate(self.port, self._moto_port)
        self.gate.open()
        return self

    def __exit__(self, *exc) -> None:
        if self.gate is not None:
            self.gate.shutdown()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        """Make the store unreachable: connections refused or reset (moto keeps its objects)."""
        self.gate.close()

    def start(self) -> None:
        self.gate.open()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self._moto_port}", aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []))

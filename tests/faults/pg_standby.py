"""A PostgreSQL primary, a streaming standby, and one address in front of them.

The primary is pgserver's embedded PostgreSQL; the standby is a pg_basebackup of it,
started with pgserver's binaries. The app connects to a TCP proxy on 127.0.0.1 that
forwards to the primary's unix socket, as a Kubernetes Service (CloudNativePG's `-rw`)
forwards to the primary pod: a failover kills the primary, promotes the standby and
points the proxy at it, dropping every connection it carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
from pgserver._commands import POSTGRES_BIN_PATH

from app.ops.embedded import start_postgres, stop_postgres
from app.ops.supervisor import free_port

#: The system user pgserver runs PostgreSQL as when the tests run as root.
PG_SYSTEM_USER = "pgserver"
PORT = 5432


class Proxy:
    """TCP on 127.0.0.1:port -> a unix socket; switch() moves it and cuts every connection."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.port = free_port()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port))
        ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        self._writers -= {writer, up_writer}

    def switch(self, target: str) -> None:
        """Send new connections to target; close the ones open now (their server is gone)."""
        def cut() -> None:
            self.target = target
            for w in list(self._writers):
                w.close()
        self._loop.call_soon_threadsafe(cut)

    def close(self) -> None:
        """Stop the proxy."""
        self.switch(self.target)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


class PrimaryStandby:
    """Primary and standby in base; `url(db)` reaches whichever is primary now."""

    def __init__(self, base: Path, synchronous: bool) -> None:
        os.chmod(base, 0o755)  # pgserver's system user must reach both data directories
        self.primary_dir, self.standby_dir = base / "primary", base / "standby"
        url = start_postgres(self.primary_dir)
        self.primary_socket_dir = parse_qs(urlsplit(url).query)["host"][0]
        self.proxy = Proxy(f"{self.primary_socket_dir}/.s.PGSQL.{PORT}")
        self.synchronous = synchronous

    def url(self, database: str = "postgres") -> str:
        """The one address the app is given: the proxy."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.proxy.port}/{database}"

    def start_standby(self) -> None:
        """Base-back the primary up (its databases as they are now) and stream from it."""
        self.standby_dir.mkdir(mode=0o700)
        _chown(self.standby_dir)
        # -c fast: the default spread checkpoint takes most of checkpoint_timeout.
        self._run("pg_basebackup", "-h", self.primary_socket_dir, "-p", str(PORT),
                  "-U", "postgres", "-D", str(self.standby_dir), "-R", "-X", "stream",
                  "-c", "fast")
        # The primary keeps its socket in its data directory: the copy has its lock file.
        for lock in self.standby_dir.glob(".s.PGSQL.*"):
            lock.unlink()
        self._pg_ctl(self.standby_dir, "start")
        if self.synchronous:
            self._sql(self.primary_socket_dir,
                      "ALTER SYSTEM SET synchronous_standby_names = '*'")
            self._sql(self.primary_socket_dir, "SELECT pg_reload_conf()")

    def replicating(self) -> bool:
        """Whether the standby streams (and, if synchronous, confirms every commit)."""
        rows = self._sql(self.primary_socket_dir, "SELECT sync_state FROM pg_stat_replication")
        return bool(rows) and (not self.synchronous or rows[0][0] == "sync")

    def fail_over(self) -> None:
        """SIGKILL the primary, promote the standby, point the address at it."""
        pid = int((self.primary_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        self._run("pg_ctl", "-D", str(self.standby_dir), "-w", "-t", "60", "promote")
        self.proxy.switch(self._socket(self.standby_dir))

    def close(self) -> None:
        """Stop the proxy and both servers."""
        self.proxy.close()
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.standby_dir), "-w", "-m", "immediate", "stop")
        with contextlib.suppress(Exception):
            stop_postgres(self.primary_dir)

    def _socket(self, pgdata: Path) -> str:
        return str(pgdata / f".s.PGSQL.{PORT}")

    def _pg_ctl(self, pgdata: Path, action: str) -> None:
        self._run("pg_ctl", "-D", str(pgdata), "-w", "-t", "60", "-l", str(pgdata / "log"),
                  "-o", '-h ""', "-o", f"-k {pgdata}", "-o", f"-p {PORT}", action)

    def _run(self, program: str, *args: str) -> None:
        user = PG_SYSTEM_USER if os.geteuid() == 0 else None
        subprocess.run([str(POSTGRES_BIN_PATH / program), *args], user=user, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=120, cwd="/tmp")

    def _sql(self, socket_dir: str, query: str) -> list[tuple[object, ...]]:
        conninfo = f"host={socket_dir} port={PORT} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            cursor = conn.execute(query)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        shutil.chown(path, entry.pw_uid, entry.pw_gid)

"""A throwaway PostgreSQL (pgserver) and a PgBouncer in transaction-pooling mode in front of it, for benches.

    with Fleet(max_connections=100) as fleet:
        fleet.direct_url, fleet.pooled_url   # the same database, the same password-protected role

PgBouncer is Debian's `pgbouncer` (apt-get install pgbouncer); as root it drops to the server's system user (-u),
which can reach PostgreSQL's Unix socket.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PASSWORD = "bench-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fleet:
    """PostgreSQL with `max_connections`, a role `tuner` (password PASSWORD), and PgBouncer (transaction mode,
    `pool_size` server connections) in front of it."""

    def __init__(self, max_connections: int = 100, pool_size: int = 20, max_client_conn: int = 2000):
        self.max_connections, self.pool_size, self.max_client_conn = max_connections, pool_size, max_client_conn

    def __enter__(self) -> Fleet:
        import pgserver

        self.dir = Path(tempfile.mkdtemp(prefix="tuner-fleet-"))
        self.pgdata = self.dir / "pg"
        self.server = pgserver.get_server(self.pgdata, cleanup_mode="delete")
        self.server.psql(f"ALTER SYSTEM SET max_connections = {self.max_connections};")
        pgserver._commands.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.pgdata, user=self.server.system_user)
        self.server.psql(f"CREATE ROLE tuner LOGIN PASSWORD '{PASSWORD}'; GRANT ALL ON SCHEMA public TO tuner;"
                         "CREATE DATABASE fleet OWNER tuner;")
        socket_dir = str(self.pgdata)
        self.direct_url = f"postgresql+psycopg2://tuner:{PASSWORD}@/fleet?host={socket_dir}"
        self.port = free_port()
        self.pooled_url = f"postgresql+psycopg2://tuner:{PASSWORD}@127.0.0.1:{self.port}/fleet"
        self._start_pgbouncer(socket_dir)
        return self

    def _start_pgbouncer(self, socket_dir: str) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise SystemExit("pgbouncer is not installed: apt-get install pgbouncer")
        conf = self.dir / "pgbouncer"
        conf.mkdir()
        (conf / "userlist.txt").write_text(f'"tuner" "{PASSWORD}"\n')
        (conf / "pgbouncer.ini").write_text(
            f"[databases]\nfleet = host={socket_dir} port=5432 dbname=fleet\n\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {conf / 'userlist.txt'}\npool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\nmax_client_conn = {self.max_client_conn}\n"
            f"logfile = {conf / 'pgbouncer.log'}\npidfile = {conf / 'pgbouncer.pid'}\n"
            "log_connections = 0\nlog_disconnections = 0\n"  # a fleet's connections would flood the log
            # tuner's workers would rather wait than be dropped: PgBouncer's default gives up on a client that
            # waited 120 s for a server connection, which hundreds of workers on 2 cores do
            "query_wait_timeout = 0\n")
        os.chmod(self.dir, 0o755)
        for path in (conf, *conf.iterdir()):
            os.chmod(path, 0o777 if path.is_dir() else 0o666)
        user = ["-u", self.server.system_user] if os.geteuid() == 0 else []
        # its output to a file, never a pipe nobody reads: PgBouncer blocks once a pipe's buffer is full
        self.output = conf / "pgbouncer.out"
        with open(self.output, "w") as out:
            self.pgbouncer = subprocess.Popen([binary, *user, str(conf / "pgbouncer.ini")],
                                              stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.pgbouncer.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"pgbouncer did not start: {self.output.read_text()}")
                time.sleep(0.1)

    def server_connections(self) -> int:
        """Backends of role tuner on the server now (what PgBouncer holds, or the workers directly)."""
        out = self.server.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'tuner';")
        return int(out.split()[2])

    def __exit__(self, *exc) -> None:
        self.pgbouncer.terminate()
        self.pgbouncer.wait(timeout=30)
        self.server.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

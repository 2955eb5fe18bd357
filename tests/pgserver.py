"""A real PostgreSQL (Debian's binaries) for the tests: a cluster of its own in a temporary
directory, on loopback, stopped and removed at the end.

Input: the binaries, found by `find_bindir()`: the directory named by MAILGATE_PG_BIN when it
is set (and only there), else the newest `/usr/lib/postgresql/<version>/bin`, else `initdb` on
PATH. Output: `PgServer`, a running postmaster on `127.0.0.1:<free port>` (its unix socket in
the temporary directory, nowhere else) with one superuser, `postgres`, trusted without a
password; `create_database()` makes a fresh database (a copy of an empty template, fast) and
returns its URL.

Run as root (CI is), the cluster belongs to the `postgres` user: initdb and pg_ctl run through
`runuser -u postgres --` (PostgreSQL refuses to run as root) in a directory under /tmp owned by
that user. Durability is off (fsync, synchronous_commit, full_page_writes): the data is thrown
away at the end (`durable=True` keeps PostgreSQL's defaults, for benchmarks).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

NOT_INSTALLED = ("PostgreSQL not installed (Debian package postgresql): PostgreSQL tests"
                 " skipped")
BIN_ENV = "MAILGATE_PG_BIN"
TEMPLATE = "mailgate_template"
TEMPLATE_AT_HEAD = "mailgate_template_head"  # with mailgate's schema at its head revision
_counter = itertools.count(1)


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, None when there is none."""
    wanted = os.environ.get(BIN_ENV)
    if wanted is not None:
        candidates = [wanted]
    else:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key,
                            reverse=True)
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        bindir = Path(candidate)
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self, bindir: Path, durable: bool = False) -> None:
        """`durable`: PostgreSQL's own defaults for fsync, synchronous_commit and
        full_page_writes (as a real installation runs; bench/scaleout.py), and Debian's
        shared_buffers; otherwise all three off, for the tests' speed."""
        self.bindir = bindir
        self.durable = durable
        self.port = 0
        self.as_root = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="mailgate-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        if self.as_root:  # the postgres user must own its cluster and reach the socket dir
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.dir.chmod(0o700)

    def _run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C",
               "TZ": "UTC"}
        result = subprocess.run([*prefix, *(str(a) for a in args)], cwd=self.dir, env=env,
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(str(args[0])).name} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}{self.log()}")
        return result

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def start(self) -> PgServer:
        self._run(self.bindir / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        options = (f"-c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
                   " -c max_connections=200")
        options += (" -c shared_buffers=128MB" if self.durable else
                    " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                    " -c shared_buffers=32MB")
        for attempt in range(5):  # the free port may be taken between finding and binding
            self.port = _free_port()
            try:
                self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.log_path, "-w",
                          "-t", "60", "-o", f"{options} -p {self.port}", "start")
                break
            except RuntimeError:
                if attempt == 4 or "could not bind" not in self.log():
                    raise
        with self.connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        return self

    def pause(self) -> None:
        """Stop the server (fast: clients are cut off) keeping its data: the database is down."""
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop",
                  timeout=60)

    def resume(self) -> None:
        """Start the paused server again on the same port."""
        options = (f"-c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                   f" -c max_connections=200 -c shared_buffers=32MB -p {self.port}")
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.log_path, "-w", "-t",
                  "60", "-o", options, "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                               dbname=database, autocommit=True, connect_timeout=10)

    def create_database(self, at_head: bool = False) -> str:
        """A new database, empty or (`at_head`) with mailgate's schema as the first start of
        a daemon makes it (copied from a template upgraded once); its URL."""
        template = TEMPLATE
        if at_head:
            self._template_at_head()
            template = TEMPLATE_AT_HEAD
        name = f"test_{os.getpid()}_{next(_counter)}"
        with self.connect() as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        return self.url(name)

    def _template_at_head(self) -> None:
        if getattr(self, "_at_head", False):
            return
        from mailgate.store.engine import make_engine
        from mailgate.store.upgrade import upgrade

        with self.connect() as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE_AT_HEAD} TEMPLATE {TEMPLATE}"
                         " STRATEGY FILE_COPY")
        engine = make_engine(self.url(TEMPLATE_AT_HEAD))
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        self._at_head = True

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "-w",
                          "stop", timeout=60)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

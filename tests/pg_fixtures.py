"""Real outside systems for the storage tests: a PostgreSQL 15 server (Debian's initdb/pg_ctl, a temp folder, a free
127.0.0.1 port, fsync off) and an S3-protocol server (moto's standalone server, `moto_server`, on a free loopback
port), each started once per test session and stopped at its end. Tests get a fresh database / bucket each.

Import the fixtures where needed: `from tests.pg_fixtures import pg_url, s3_blob_config  # noqa: F401`.
scripts/setup.sh installs what they need (the `postgresql` package, psycopg, boto3, moto[server]): a missing piece
fails these tests, naming it, so that CI never passes without them; SLMOPS_ALLOW_MISSING_SERVERS=1 skips instead.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from control_plane.procs import free_port

def missing(what: str):
    """What these tests need is not installed: a failure (CI must run them), or a skip where allowed."""
    if os.environ.get("SLMOPS_ALLOW_MISSING_SERVERS") == "1":
        pytest.skip(what)
    pytest.fail(f"{what}; run scripts/setup.sh, or set SLMOPS_ALLOW_MISSING_SERVERS=1 to skip these tests")


def need(module: str):
    try:
        return __import__(module)
    except ImportError:
        missing(f"the Python package {module!r} is not installed")


PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in PG_BIN_DIRS:
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def _as_postgres_user():
    """initdb and postgres refuse to run as root: when the tests run as root, they run as the `postgres` user."""
    if os.geteuid() != 0:
        return None, None
    import pwd

    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        missing("running as root and there is no `postgres` user to run the PostgreSQL server as")

    def demote():
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    return demote, pw


class PgServer:
    def __init__(self, root: pathlib.Path):
        initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not self.pg_ctl:
            missing("PostgreSQL's initdb/pg_ctl are not installed")
        self.root, self.data, self.port = root, root / "data", free_port()
        demote, pw = _as_postgres_user()
        self.demote = demote
        if pw is not None:
            os.chown(root, pw.pw_uid, pw.pw_gid)
        self.env = {**os.environ, "LC_ALL": "C"}
        subprocess.run([initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                        "--no-instructions"], check=True, capture_output=True, preexec_fn=demote, env=self.env,
                       timeout=120)
        self.start()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
        subprocess.run([self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "60",
                        "start"], check=True, capture_output=True, preexec_fn=self.demote, env=self.env, timeout=90)

    def new_database(self) -> str:
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute(f"create database {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute(f"drop database if exists {name} with (force)")

    def stop(self, mode: str = "immediate") -> None:
        """"fast": a clean shutdown (a restart keeps every commit); "immediate": like a crash (with this test
        server's fsync and synchronous_commit off, the last commits may be lost)."""
        subprocess.run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"], capture_output=True,
                       preexec_fn=self.demote, timeout=60)


@contextlib.contextmanager
def own_pg_server():
    """A PostgreSQL server in a temporary folder (not under tmp_path: the postgres user reads it), stopped and
    removed afterwards; a test that stops and starts a server uses its own, so the session's stays up."""
    need("psycopg")
    root = pathlib.Path(tempfile.mkdtemp(prefix="slmops-pg-"))
    server = PgServer(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    with own_pg_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the session's PostgreSQL server; dropped after the test."""
    url = pg_server.new_database()
    yield url
    pg_server.drop_database(url)


class S3Server:
    def __init__(self):
        exe = pathlib.Path(sys.executable).with_name("moto_server")
        if not exe.exists():
            missing("moto's server (moto_server, from moto[server]) is not installed")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start on {self.endpoint}")
                time.sleep(0.2)

    def new_bucket(self) -> str:
        import boto3

        name = "t-" + secrets.token_hex(6)
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def s3_server():
    need("boto3")
    # moto accepts any credentials; boto3 wants some to sign with
    for k, v in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(k, v)
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_blob_config(s3_server):
    """A BlobConfig for a fresh bucket on the session's S3-protocol server."""
    from control_plane.blobs import BlobConfig

    return BlobConfig(f"s3://{s3_server.new_bucket()}/blobs", endpoint_url=s3_server.endpoint)


# ---- the backends, as parameters: each test that takes one runs embedded and against PostgreSQL + S3 ----------
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def state_url(request, tmp_path) -> str:
    """The state setting of a Store: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "cp.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["folder", pytest.param("s3", marks=pytest.mark.pg)])
def blob_config(request, tmp_path):
    from control_plane.blobs import BlobConfig

    if request.param == "folder":
        return BlobConfig(str(tmp_path / "blobs"))
    return request.getfixturevalue("s3_blob_config")


@pytest.fixture(params=["embedded", pytest.param("postgresql+s3", marks=pytest.mark.pg)])
def cp_backend(request) -> dict:
    """ControlPlaneConfig settings: {} (SQLite + folder in the data dir), then PostgreSQL + S3."""
    if request.param == "embedded":
        return {}
    blobs = request.getfixturevalue("s3_blob_config")
    return {"state": request.getfixturevalue("pg_url"), "blobs": blobs.url, "s3_endpoint": blobs.endpoint_url}

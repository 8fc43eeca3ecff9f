"""The storage seams under the conditions only real servers show: two connections redeeming one enrollment token at
the same moment, the same telemetry sequence numbers uploaded twice at once, migrations applied once and a newer
schema refused, an old SQLite file adopted, an unreachable PostgreSQL named in one line, a publish while the S3
store is down (a clear error, nothing half-published) and the documented PostgreSQL + S3 deployment run as written.
Each state test runs on SQLite and on PostgreSQL (tests/pg_fixtures.py; `-m pg` selects the PostgreSQL ones)."""
from __future__ import annotations

import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from control_plane import migrations
from control_plane.procs import free_port
from control_plane.sqldb import StateConfig
from control_plane.store import Store
from slmops.errors import ConfigError, StorageUnavailable

ROOT = pathlib.Path(__file__).resolve().parents[1]


def at_once(n: int, fn) -> list:
    """Runs fn(i) on n threads released together; returns the results in order."""
    gate, out = threading.Barrier(n), [None] * n

    def run(i):
        gate.wait()
        out[i] = fn(i)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def test_two_connections_redeeming_one_use_token_at_once_exactly_one_succeeds(state_url):
    a, b = Store(state_url), Store(state_url)   # two stores: two connections, no shared in-process lock
    for _ in range(10):
        token, _ = a.create_enroll_token(uses=1)
        got = at_once(2, lambda i: (a, b)[i].consume_enroll_token(token))
        assert sorted(got, key=str) == [None, "enrollment token already used up"], got
    token, _ = a.create_enroll_token(uses=3)
    got = at_once(8, lambda i: (a, b)[i % 2].consume_enroll_token(token))
    assert got.count(None) == 3 and got.count("enrollment token already used up") == 5


def test_the_same_sequence_numbers_uploaded_twice_at_once_are_stored_once(state_url):
    a, b = Store(state_url), Store(state_url)
    did, _ = a.add_device("d", {}, "test")
    events = [{"seq": s, "ts_ms": 1_000 + s, "kind": "request", "name": "chat", "model": "m@v1", "latency_ms": 1.0,
               "first_token_ms": 1.0, "tokens_in": 1, "tokens_out": 1, "outcome": "ok", "detail": "50% done?"}
              for s in range(1, 301)]
    got = at_once(2, lambda i: (a, b)[i].add_telemetry(did, events))
    assert sum(stored for stored, _ in got) == 300 and sum(dup for _, dup in got) == 300
    assert len(a.telemetry(did, 0)) == 300 and a.telemetry(did, 0)[0]["detail"] == "50% done?"
    seqs = at_once(8, lambda i: [(a, b)[i % 2].next_counter("drift_event_seq") for _ in range(10)])
    flat = [s for chunk in seqs for s in chunk]
    assert sorted(flat) == list(range(1, 81))   # no number handed out twice


def test_insert_ignore_counts_only_new_rows_even_twice_in_one_transaction(state_url):
    """The bulk path (COPY through a staging table on PostgreSQL): rows already stored, or staged and inserted by
    an earlier call in the same transaction, are not counted again; a NUL in device text does not break it."""
    from control_plane.store import TELEMETRY_COLUMNS

    s = Store(state_url)
    did, _ = s.add_device("d", {}, "test")

    def rows(seqs):
        return [(did, q, 1_000 + q, "request", "chat", "m@v1", 1.0, 1.0, 1, 1, "ok", "nul\x00here", 5, "", "")
                for q in seqs]
    with s.transaction():
        first = s.dialect.insert_ignore(s.db, "telemetry", TELEMETRY_COLUMNS, rows(range(1, 11)))
        second = s.dialect.insert_ignore(s.db, "telemetry", TELEMETRY_COLUMNS, rows(range(6, 16)))
    third = s.dialect.insert_ignore(s.db, "telemetry", TELEMETRY_COLUMNS, rows(range(1, 21)))  # own transaction
    assert (first, second, third) == (10, 5, 5)
    got = s.telemetry(did, 0)
    assert [r["seq"] for r in got] == list(range(1, 21)) and "here" in got[0]["detail"]


def test_migrations_are_recorded_applied_once_and_a_newer_schema_is_refused(state_url):
    s = Store(state_url)
    rows = s.db.execute("select version from schema_version order by version").fetchall()
    assert [r[0] for r in rows] == [m.version for m in migrations.MIGRATIONS]
    assert migrations.migrate(s.db, s.dialect) == []   # a second start applies nothing
    s.db.execute("insert into schema_version (version, description, applied_ms) values (?, ?, ?)",
                 [migrations.LATEST + 1, "from a newer control plane", 0])
    with pytest.raises(ConfigError, match=f"schema version {migrations.LATEST + 1}"):
        Store(state_url)


def test_a_sqlite_file_from_before_migrations_is_adopted_with_its_rows(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as c:   # the shape of the first schema: later columns missing, no schema_version
        c.execute("create table meta (key text primary key, value text)")
        c.execute("create table devices (device_id text primary key, name text, token_hash text, hardware text, "
                  "agent_version text, desired_name text, desired_version text, desired_rev integer, "
                  "current_name text, current_version text, state text, message text, last_seen_ms integer, "
                  "enrolled_ms integer)")
        c.execute("insert into devices values ('dev_1', 'a', 'h', '{}', '0', 'm', 'v1', 3, '', '', 'serving', '', "
                  "1, 1)")
        c.execute("create table telemetry (device_id text, seq integer, ts_ms integer, kind text, name text, "
                  "model text, latency_ms real, first_token_ms real, tokens_in integer, tokens_out integer, "
                  "outcome text, detail text, received_ms integer, primary key (device_id, seq))")
    s = Store(path)
    assert s.device("dev_1")["desired_rev"] == 3 and "labels" in s.db["devices"].columns_dict
    assert "vals" in s.db["telemetry"].columns_dict
    assert s.downloadable(s.device("dev_1")) == [("m", "v1")]
    assert s.db.execute("select count(*) from device_assigned").fetchone()[0] == 1


def test_an_unreachable_postgresql_is_one_clear_error_naming_the_host(tmp_path):
    port = free_port()
    url = f"postgresql://slmops:secret@127.0.0.1:{port}/fleet"
    with pytest.raises(StorageUnavailable, match=f"PostgreSQL at 127.0.0.1:{port}/fleet"):
        Store(StateConfig(url, connect_timeout_s=2))
    assert StateConfig(url).display() == f"postgresql://slmops:***@127.0.0.1:{port}/fleet"
    with pytest.raises(ConfigError, match="unknown scheme"):
        Store("mysql://x@y/z")
    r = subprocess.run([sys.executable, "-m", "cli", "control-plane", "serve", "--data-dir", str(tmp_path / "cp"),
                        "--insecure-loopback-dev", "--listen", "127.0.0.1:0", "--state", url],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and f"127.0.0.1:{port}/fleet" in out and "Traceback" not in out, out
    assert "secret" not in out


def small_bundle(folder: pathlib.Path, model_bytes: int) -> pathlib.Path:
    """A bundle the registry accepts (random model bytes: more than one chunk at chunk_bytes=100_000)."""
    folder.mkdir()
    (folder / "model.onnx").write_bytes(os.urandom(model_bytes))
    (folder / "genai_config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.mark.pg
def test_publish_while_the_s3_store_is_down_fails_naming_it_and_publishes_nothing(tmp_path, s3_server, pg_url):
    from control_plane.admin_client import AdminClient, AdminError
    from control_plane.server import ControlPlane, ControlPlaneConfig
    from slmops.manifest import manifest_for_dir
    from tests.pg_fixtures import S3Server

    own = S3Server()   # this test's own S3 server, so stopping it leaves the session's alone
    try:
        bucket = own.new_bucket()
        cp = ControlPlane(ControlPlaneConfig(data_dir=tmp_path / "cp", listen="127.0.0.1:0", insecure_loopback_dev=True,
                                             state=pg_url, blobs=f"s3://{bucket}/fleet", s3_endpoint=own.endpoint))
        port = cp.start()
        admin = AdminClient(f"127.0.0.1:{port}", cp.admin_token_path.read_text().strip())
        try:
            bundle = small_bundle(tmp_path / "bundle", 300_000)
            admin.publish(bundle, manifest_for_dir(bundle, "m", "v1", "int4", chunk_bytes=100_000))
            (bundle / "model.onnx").write_bytes(os.urandom(300_000))
            own.stop()
            with pytest.raises(AdminError) as e:
                admin.publish(bundle, manifest_for_dir(bundle, "m", "v2", "int4", chunk_bytes=100_000))
            assert e.value.code.name == "UNAVAILABLE"
            assert f"blob store s3://{bucket}/fleet at {own.endpoint}" in str(e.value)
            from slmops.v1 import admin_pb2   # the blobs' check inside PublishModel itself fails the same way
            m3 = manifest_for_dir(bundle, "m", "v3", "int4", chunk_bytes=100_000)
            with pytest.raises(AdminError, match=f"not published: blob store s3://{bucket}/fleet"):
                admin._call(admin.stub.PublishModel, admin_pb2.PublishRequest(manifest_json=m3.to_json()))
            assert [m.model.version for m in admin.models()] == ["v1"]
            assert cp.store.model("m", "v2") is None
            assert cp.store.db.execute("select count(*) from model_files where version = 'v2'").fetchone()[0] == 0
        finally:
            admin.close()
            cp.stop(0)
    finally:
        own.stop()


def deployment_block() -> str:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    start = text.index("## Deployment shapes\n")
    nxt = text.find("\n## ", start + 3)
    blocks = re.findall(r"^```bash\n(.*?)^```", text[start:nxt], flags=re.S | re.M)
    assert len(blocks) == 1, "docs/ARCHITECTURE.md's Deployment shapes has one shell block (run here)"
    return blocks[0]


@pytest.mark.pg
@pytest.mark.timeout(300)
def test_the_documented_postgresql_and_s3_deployment_runs_as_written(tmp_path, pg_url, s3_server):
    """docs/ARCHITECTURE.md, "Deployment shapes": only the database URL, the S3 endpoint, the bucket and the ports
    are replaced by this test's own. A second replica joins with the first one's identity."""
    bucket, port, port2 = s3_server.new_bucket(), free_port(), free_port()
    script = (deployment_block().replace("postgresql://slmops@127.0.0.1:5432/slmops", pg_url)
              .replace("http://127.0.0.1:8333", s3_server.endpoint).replace("s3://slmops-blobs/", f"s3://{bucket}/")
              .replace("127.0.0.1:50061", f"127.0.0.1:{port}").replace("127.0.0.1:50062", f"127.0.0.1:{port2}"))
    assert pg_url in script and s3_server.endpoint in script and bucket in script
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "deploy.sh").write_text("set -euo pipefail -x\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n"
                                        + script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLMOPS_")}
    proc = subprocess.Popen(["bash", "deploy.sh"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert "Traceback" not in text and "slm_enroll_" in text and "tok_" in text
    assert "no version served in the last 1h" in text   # slmops drift --state read the PostgreSQL state
    assert len(Store(pg_url).enroll_tokens()) == 1                # the state went to PostgreSQL,
    assert not (tmp_path / "cp-one" / "control_plane.db").exists()   # not to a SQLite file
    assert not (tmp_path / "cp-one" / "blobs").exists()
    assert text.count("│ site=berlin │") == 2, text[-3000:]   # the token, listed through each replica
    assert (tmp_path / "cp-two" / "keys" / "ca.pem").read_bytes() == (tmp_path / "cp-one" / "keys" / "ca.pem").read_bytes()


@pytest.mark.pg
def test_a_restarted_postgresql_is_named_while_down_and_reconnected_after():
    from tests.pg_fixtures import own_pg_server

    with own_pg_server() as own:   # its own server: the session's stays up for the other tests
        url = own.new_database()
        store = Store(url)
        did, _ = store.add_device("a", {}, "test")
        own.stop("fast")
        with pytest.raises(StorageUnavailable, match=f"PostgreSQL at 127.0.0.1:{own.port}/"):
            store.device(did)
        with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{own.port}/"):   # still down: named again
            store.device(did)
        own.start()
        assert store.device(did)["name"] == "a"   # the same Store, a new connection


def test_state_and_blob_settings_are_checked_when_the_config_is_made(tmp_path):
    from control_plane.blobs import BlobStore
    from control_plane.server import ControlPlaneConfig

    cfg = ControlPlaneConfig(data_dir=tmp_path / "cp", state=f"sqlite://{tmp_path}/elsewhere/state.db",
                             blobs=str(tmp_path / "blob-folder"))
    assert cfg.state_config().kind == "sqlite" and cfg.state_config().sqlite_path == tmp_path / "elsewhere/state.db"
    Store(cfg.state_config()).set_meta("k", "v")
    assert (tmp_path / "elsewhere" / "state.db").is_file()
    from control_plane.blobs import open_blobs
    assert isinstance(open_blobs(cfg.blob_config()), BlobStore) and (tmp_path / "blob-folder").is_dir()
    assert ControlPlaneConfig(data_dir=tmp_path / "cp").state_config().sqlite_path == tmp_path / "cp/control_plane.db"
    for kw, words in (({"s3_endpoint": "http://127.0.0.1:9"}, "--s3-endpoint is for --blobs s3://"),
                      ({"blobs": "s3://"}, "name the bucket"),
                      ({"blobs": "s3://b", "s3_endpoint": "ftp://x"}, "http:// or https://"),
                      ({"state": "postgresql://"}, "name the host and database"),
                      ({"state": "redis://x"}, "unknown scheme")):
        with pytest.raises(ConfigError, match=words):
            ControlPlaneConfig(data_dir=tmp_path / "cp", **kw)


@pytest.mark.pg
def test_an_offline_bundle_is_written_from_postgresql_and_s3(tmp_path, pg_url, s3_blob_config):
    import hashlib
    import tarfile

    from control_plane.admin_client import AdminClient
    from control_plane.server import ControlPlane, ControlPlaneConfig
    from slmops.manifest import manifest_for_dir

    blobs = ["--blobs", s3_blob_config.url, "--s3-endpoint", s3_blob_config.endpoint_url]
    cp = ControlPlane(ControlPlaneConfig(data_dir=tmp_path / "cp", listen="127.0.0.1:0", insecure_loopback_dev=True,
                                         state=pg_url, blobs=blobs[1], s3_endpoint=blobs[3]))
    port = cp.start()
    admin = AdminClient(f"127.0.0.1:{port}", cp.admin_token_path.read_text().strip())
    try:
        bundle = small_bundle(tmp_path / "bundle", 250_000)
        admin.publish(bundle, manifest_for_dir(bundle, "m", "v1", "int4", chunk_bytes=100_000))
    finally:
        admin.close()
        cp.stop(0)
    out = tmp_path / "m-v1.slmops.tar"
    r = subprocess.run([sys.executable, "-m", "cli", "models", "bundle", "m", "v1", "--out", str(out),
                        "--cp-data-dir", str(tmp_path / "cp"), "--state", pg_url, *blobs],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    with tarfile.open(out) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.startswith("blobs/")}
    assert len(got) == 1 + 3 + 1   # the manifest, 3 chunks of model.onnx, the two "{}" files (one blob)
    assert all(hashlib.sha256(data).hexdigest() == name.split("/")[1] for name, data in got.items())


def test_two_connections_revoking_the_last_two_admin_tokens_at_once_leave_one(state_url):
    from control_plane.store import LastAdminToken, api_token_id, token_hash

    a, b = Store(state_url), Store(state_url)
    ids = [api_token_id(token_hash(a.create_api_token("admin", f"admin-{i}"))) for i in range(2)]

    def revoke(i):
        try:
            return (a, b)[i].revoke_api_token(ids[i])["revoked"]
        except LastAdminToken:
            return "refused"
    assert sorted(at_once(2, revoke), key=str) == [True, "refused"]
    assert sum(not t["revoked"] for t in a.api_tokens() if t["role"] == "admin") == 1


def test_control_planes_starting_at_once_on_a_new_database_migrate_it_once(state_url):
    stores = at_once(3, lambda i: Store(state_url))
    assert all(isinstance(s, Store) for s in stores)
    rows = stores[0].db.execute("select version from schema_version order by version").fetchall()
    assert [r[0] for r in rows] == [m.version for m in migrations.MIGRATIONS]


def test_the_pipeline_tables_work_on_both_databases(state_url):
    """control_plane/pipelines/jobs.py makes its own tables through the sqlite-utils calls PgDatabase answers."""
    from control_plane.pipelines.jobs import Jobs

    jobs = Jobs(Store(state_url))
    job_id = jobs.add("nightly", "stages: []", "/tmp", ["train", "export"], "alice")
    jobs.set_stage(job_id, 1, status="running", message="50% done")
    jobs.log(job_id, 0, ["one", "two"])
    jobs.log(job_id, 1, ["three"])
    assert [s["message"] for s in jobs.stages(job_id)][1] == "50% done"
    assert [r["line"] for r in jobs.logs(job_id)] == ["one", "two", "three"]
    assert [r["line"] for r in jobs.logs(job_id, after_id=jobs.logs(job_id)[0]["id"])] == ["two", "three"]
    assert Jobs(Store(state_url)).job(job_id)["name"] == "nightly"   # a second start keeps them


@pytest.mark.pg
def test_a_change_made_by_one_control_plane_wakes_the_watches_of_another(pg_url):
    """Two Stores on one PostgreSQL are two control-plane replicas: set_desired / delete_device on one wakes the
    watch of that device on the other (LISTEN/NOTIFY), and only that device's; a listener whose connection is
    killed comes back and then wakes every watch (what was announced meanwhile is lost)."""
    a, b = Store(pg_url), Store(pg_url)
    try:
        d1, _ = a.add_device("d1", {}, "test")
        d2, _ = a.add_device("d2", {}, "test")
        w1, w2 = threading.Event(), threading.Event()
        b.subscribe(d1, w1)
        b.subscribe(d2, w2)
        assert b.listener.listening.wait(30), b.listener.last_error
        a.set_desired("m", "v1", [d1])
        assert w1.wait(30), "the other replica's watch of d1 was not woken"
        assert not w2.is_set() and b.desired(d1).version == "v1"
        w1.clear()
        a.delete_device(d2)
        assert w2.wait(30) and not w1.is_set()
        w1.clear()
        w2.clear()
        with a.db.conn.cursor() as cur:   # the listener's connection dies (as when PostgreSQL restarts)
            cur.execute("select pg_terminate_backend(pid) from pg_stat_activity where query ilike 'listen%'")
        assert w1.wait(60) and w2.wait(60), "after reconnecting, the listener did not wake every watch"
        assert b.listener.errors >= 1 and b.listener.listening.wait(30)
        w1.clear()
        a.set_desired("m", "v2", None)   # the whole fleet
        assert w1.wait(30) and b.desired(d1).version == "v2"
        own = threading.Event()   # a's own change: woken by a at once, its NOTIFY not woken again by a
        a.subscribe(d1, own)
        assert a.listener.listening.wait(30)
        a.set_desired("m", "v3", [d1])
        assert own.is_set()
        deadline = time.monotonic() + 30
        while a.listener.skipped == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.listener.skipped >= 1, "a's listener did not recognise a's own announcement"
    finally:
        a.stop_listening()
        b.stop_listening()
    assert b.listener is None


def test_sqlite_needs_no_listener(tmp_path):
    s = Store(tmp_path / "state.db")
    w = threading.Event()
    s.subscribe("dev_x", w)
    assert s.listener is False   # one process: its own wake-ups are all there are
    s.stop_listening()


@pytest.mark.pg
def test_one_replica_holds_the_leader_lease_and_another_takes_it_when_it_dies(pg_url):
    a, b = Store(pg_url), Store(pg_url)
    try:
        assert a.leader.held() and not b.leader.held() and a.leader.held()
        assert (leader_gauge(a), leader_gauge(b)) == (1, 0)   # what /metrics tells an operator
        with b.db.conn.cursor() as cur:   # a's lease session dies (as when its process is killed)
            cur.execute("select pg_terminate_backend(%s, 10000)", [a.leader._conn.info.backend_pid])  # waits
        assert b.leader.held(), "the lease was not free once its holder's session died"
        assert not a.leader.held()   # it noticed its session was gone, and the lease is b's now
        assert (leader_gauge(a), leader_gauge(b)) == (0, 1)
        b.stop_listening()   # a clean stop gives it up
        assert a.leader.held()
    finally:
        a.stop_listening()
        b.stop_listening()


@pytest.mark.pg
def test_the_lease_session_detects_a_vanished_peer_in_seconds(pg_url):
    """A leader whose host vanishes (no FIN) must not hold the lease for the kernel's two-hour keepalive: the
    server probes the lease session after 5 s idle, and the client gives up on a dead link within 10 s."""
    from control_plane.sqldb import LEASE_KEEPALIVE

    s = Store(pg_url)
    try:
        assert s.leader.held()
        conn = s.leader._conn
        if conn.info.host.startswith("/"):
            pytest.skip("a Unix-socket PostgreSQL ignores TCP keepalive settings")
        shown = {k: conn.execute(f"show {k}").fetchone()[0]
                 for k in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")}
        assert shown == {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
                         "tcp_keepalives_count": "3"}, shown
        params = conn.info.get_parameters()
        assert params.get("tcp_user_timeout") == str(LEASE_KEEPALIVE["tcp_user_timeout"]), params
        assert params.get("keepalives_idle") == "5", params
    finally:
        s.stop_listening()


def leader_gauge(store: Store) -> float:
    """slmops_cp_leader as the control plane's /metrics renders it for this store."""
    from control_plane.cp_metrics import ControlPlaneMetrics

    line = next(x for x in ControlPlaneMetrics(store).render().splitlines() if x.startswith("slmops_cp_leader "))
    return float(line.split()[1])


def test_on_sqlite_the_one_control_plane_is_the_leader(tmp_path):
    s = Store(tmp_path / "state.db")
    assert s.leader.held() and leader_gauge(s) == 1


@pytest.mark.pg
def test_two_replicas_publishing_keep_one_growing_signed_chain(pg_url, tmp_path):
    """Two Repositories (replicas) over one PostgreSQL and one trust folder publish in turn and at once: every
    target stays in the signed targets, versions only grow, and each serves what the other last signed."""
    from tuf.api.metadata import Metadata

    from control_plane.trust_repo import Repository

    a = Repository(tmp_path / "trust", Store(pg_url))
    b = Repository(tmp_path / "trust", Store(pg_url))
    a.add_target("m", "v1", b"manifest one", {})
    b.add_target("m", "v2", b"manifest two", {})
    assert a.current() == b.current()

    def targets(raw: dict) -> tuple[int, set]:
        md = Metadata.from_bytes(raw["targets"])
        return md.signed.version, set(md.signed.targets)
    v, names = targets(a.current())
    assert names == {"m/v1/manifest.json", "m/v2/manifest.json"}
    errors = []

    def publish(repo, i):
        try:
            repo.add_target("m", f"c{i}", f"manifest {i}".encode(), {})
        except Exception as e:   # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=publish, args=(r, i)) for i, r in enumerate([a, b] * 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    v2, names = targets(b.current())
    assert v2 == v + 8 and {f"m/c{i}/manifest.json" for i in range(8)} <= names and len(names) == 10
    assert a.current() == b.current()


def test_insert_ignore_leaves_nothing_staged_for_a_later_call(state_url):
    """Rows one call stored and the same transaction then deleted do not come back with the next call (on
    PostgreSQL they would, from the staging table, if a call left its staged rows behind)."""
    from control_plane.store import TELEMETRY_COLUMNS

    s = Store(state_url)
    did, _ = s.add_device("d", {}, "test")

    def rows(seqs):
        return [(did, q, 1_000 + q, "request", "chat", "m@v1", 1.0, 1.0, 1, 1, "ok", "", 5, "", "") for q in seqs]
    with s.transaction():
        assert s.dialect.insert_ignore(s.db, "telemetry", TELEMETRY_COLUMNS, rows(range(1, 11))) == 10
        s.db.execute("delete from telemetry where device_id = ?", [did])
        assert s.dialect.insert_ignore(s.db, "telemetry", TELEMETRY_COLUMNS, rows(range(11, 16))) == 5
    assert [r["seq"] for r in s.telemetry(did, 0)] == list(range(11, 16))


def test_a_rollup_rebuild_waits_for_an_upload_into_its_minute_on_another_connection(pg_url):
    """Replica A uploads into a minute that is already marked dirty and has not committed yet; replica B's rollup
    rebuild takes that mark. B must wait for A's commit (A's mark write locks the row) and then count A's event
    too; were A's mark an insert-or-ignore, B would take the mark, roll the minute up without A's event, and
    nothing would ever mark it again."""
    from control_plane.telemetry_views import TelemetryViews

    a, b = Store(pg_url), Store(pg_url)
    did, _ = a.add_device("d", {}, "test")
    minute = 1_800_000_000_000 // 60_000 * 60_000

    def event(seq):
        return {"seq": seq, "ts_ms": minute + seq, "kind": "request", "name": "chat", "model": "m@v1",
                "latency_ms": 1.0, "first_token_ms": 1.0, "tokens_in": 1, "tokens_out": 1, "outcome": "ok",
                "detail": ""}
    assert a.add_telemetry(did, [event(1)]) == (1, 0)          # committed: the minute is marked dirty
    uploaded, release, done = threading.Event(), threading.Event(), []

    def upload():   # A: the second event and its mark, held uncommitted until told
        with a.transaction():
            done.append(a.add_telemetry(did, [event(2)]))
            uploaded.set()
            release.wait(timeout=60)
    up = threading.Thread(target=upload)
    up.start()
    assert uploaded.wait(timeout=30)
    rebuild = threading.Thread(target=lambda: done.append(TelemetryViews(b).refresh()))
    rebuild.start()
    waiting = False
    for _ in range(300):   # B blocks on A's row lock (seen in pg_stat_activity), bounded to ~30 s
        if a.db.execute("select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                        "and datname = current_database()").fetchone()[0]:
            waiting = True
            break
        if not rebuild.is_alive():
            break
        time.sleep(0.1)
    release.set()
    up.join(timeout=60)
    rebuild.join(timeout=60)
    assert waiting, "the rebuild did not wait for the uncommitted upload into its minute"
    (row,) = [r for r in TelemetryViews(b).minutes(did, minute, minute + 60_000) if r["minute_ms"] == minute]
    assert row["requests"] == 2, row

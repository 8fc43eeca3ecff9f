"""The store and blob store, each test on both implementations: SQLite and PostgreSQL (`-m pg`), the local folder
and S3 (tests/pg_fixtures.py starts the servers)."""
import pytest

from control_plane.blobs import BlobStore, open_blobs
from control_plane.rollups import percentile, summarize
from control_plane.store import Store
from slmops.errors import ArtifactInvalid


@pytest.fixture
def store(state_url):
    """A Store on SQLite, then on PostgreSQL. A watch (wait_for_change) starts its PostgreSQL listener: stopped
    here, or its thread outlives the test and retries the session's server after it has stopped."""
    s = Store(state_url)
    yield s
    s.stop_listening()


def test_enroll_token_uses_and_expiry(store):
    token, _ = store.create_enroll_token(uses=2)
    assert store.consume_enroll_token(token) is None
    assert store.consume_enroll_token(token) is None
    assert store.consume_enroll_token(token) == "enrollment token already used up"
    assert store.consume_enroll_token("nope") == "unknown enrollment token"
    expired, _ = store.create_enroll_token(uses=1, ttl_s=-1)
    assert store.consume_enroll_token(expired) == "enrollment token expired"


def test_fleet_default_applies_to_later_devices_and_bumps_revision(store):
    a, _ = store.add_device("a", {}, "0.1.0")
    assert store.desired(a).name == ""
    assert store.set_desired("m", "v1", None) == 1
    b, _ = store.add_device("b", {}, "0.1.0")
    assert (store.desired(b).name, store.desired(b).version) == ("m", "v1")
    rev = store.desired(a).revision
    store.set_desired("m", "v2", [a])
    assert store.desired(a).revision == rev + 1 and store.desired(b).version == "v1"


def test_wait_for_change_returns_on_change_or_timeout(store):
    a, _ = store.add_device("a", {}, "0.1.0")
    rev = store.desired(a).revision
    assert store.wait_for_change(a, rev, timeout=0.05).revision == rev
    store.set_desired("m", "v1", [a])
    assert store.wait_for_change(a, rev, timeout=5).revision == rev + 1


def test_telemetry_is_stored_once_per_sequence_number(store):
    a, _ = store.add_device("a", {}, "0.1.0")
    ev = lambda seq: {"seq": seq, "ts_ms": 1, "kind": "request", "name": "chat", "model": "m@v1",  # noqa: E731
                      "latency_ms": 10.0, "first_token_ms": 2.0, "tokens_in": 3, "tokens_out": 4,
                      "outcome": "ok", "detail": ""}
    assert store.add_telemetry(a, [ev(1), ev(2)]) == (2, 0)
    assert store.add_telemetry(a, [ev(2), ev(3)]) == (1, 1)
    assert len(store.telemetry(a, 0)) == 3


def test_devices_identified_by_token_hash_only(store):
    did, token = store.add_device("a", {}, "0.1.0")
    assert store.device_for_token(token)["device_id"] == did
    assert store.device_for_token(token + "x") is None
    assert token not in str(store.db.execute("select * from devices").fetchall())


def test_blob_store_is_content_addressed_and_checks_expected_hash(blob_config, tmp_path):
    blobs = open_blobs(blob_config)
    sha, size = blobs.put_stream([b"hello ", b"world"])
    assert size == 11 and blobs.has(sha) and b"".join(blobs.read(sha, 6)) == b"world"
    assert b"".join(blobs.read(sha, 0, 5)) == b"hello" and blobs.size(sha) == 11
    assert b"".join(blobs.read(sha, 0, 0, chunk_size=4)) == b"hello world"
    with pytest.raises(ArtifactInvalid, match="expected"):
        blobs.put_stream([b"x"], expected_sha256="0" * 64)
    assert not blobs.has("2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881")   # sha256("x")
    assert not list(tmp_path.rglob(".upload-*"))
    with pytest.raises(ArtifactInvalid):
        blobs.has("../../etc/passwd")
    if isinstance(blobs, BlobStore):
        with pytest.raises(ArtifactInvalid):
            blobs.path("../../etc/passwd")


def test_percentiles_and_summary():
    assert percentile([], 50) == 0.0
    assert percentile([5, 1, 3], 50) == 3
    assert percentile(list(range(1, 101)), 95) == 95
    rows = [{"device_id": "d", "kind": "request", "outcome": "ok", "latency_ms": 100.0, "first_token_ms": 20.0,
             "tokens_in": 5, "tokens_out": 9},
            {"device_id": "d", "kind": "request", "outcome": "error", "latency_ms": 1.0, "first_token_ms": 1.0,
             "tokens_in": 0, "tokens_out": 0},
            {"device_id": "d", "kind": "event", "outcome": "ok", "latency_ms": 0.0, "first_token_ms": 0.0,
             "tokens_in": 0, "tokens_out": 0}]
    s = summarize(rows)["d"]
    assert (s["requests"], s["errors"], s["events"], s["tokens_out"]) == (2, 1, 1, 9)
    assert s["tokens_per_s"] == pytest.approx(9 / 0.08)


def test_reports_of_many_devices_are_written_in_one_call_in_order(store):
    a, _ = store.add_device("a", {}, "1")
    b, _ = store.add_device("b", {}, "1")
    store.report_many([(a, {"state": "downloading", "current_name": "m", "current_version": "v1"}),
                       (b, {"state": "serving", "hardware": '{"arch": "x86_64"}'}),
                       (a, {"state": "serving", "message": "ok"}),       # a's later report wins
                       ("dev_gone", {"state": "serving"})])                # a deleted device is skipped
    rows = {d["device_id"]: d for d in store.devices()}
    assert (rows[a]["state"], rows[a]["message"], rows[a]["current_version"]) == ("serving", "ok", "v1")
    assert (rows[b]["state"], rows[b]["hardware"]) == ("serving", '{"arch": "x86_64"}')
    assert rows[a]["reported_ms"] and rows[a]["last_seen_ms"] >= rows[a]["reported_ms"]
    store.touch(b)                                                         # seen, nothing reported
    assert store.device(b)["reported_ms"] == rows[b]["reported_ms"]
    with pytest.raises(ValueError, match="desired_version"):              # only what a device may say of itself
        store.report_many([(a, {"desired_version": "v9"})])

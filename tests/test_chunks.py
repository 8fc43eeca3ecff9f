"""Content-addressed chunks: the manifest's chunk lists, the agent's chunked fetch (resume after a cut at any
byte, only missing chunks, each checked on arrival), and the control plane storing each chunk once."""
from __future__ import annotations

import hashlib
import os
import pathlib
import random
import re
import threading

import pytest

from control_plane.blobs import BlobStore
from edge_agent.fetcher import BlobCache, plan_chunks
from slmops.errors import ArtifactInvalid
from slmops.manifest import FileEntry, Manifest, file_entry

CHUNK = 16 << 10


def random_file(path: pathlib.Path, size: int, seed: int) -> pathlib.Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


class Server:
    """A real control-plane blob store behind a fetch_range that can cut the connection after N bytes."""

    def __init__(self, root: pathlib.Path, entries, src_dir: pathlib.Path):
        self.blobs = BlobStore(root)
        for e in entries:
            self.blobs.put_file_chunks(src_dir / e.path, e)
        self.requests: list[tuple[str, int]] = []
        self.sent = 0
        self.budget: int | None = None
        self.lock = threading.Lock()
        self.tamper: set[str] = set()

    def fetch_range(self, sha: str, offset: int):
        with self.lock:
            self.requests.append((sha, offset))
        for data in self.blobs.read(sha, offset, 0, chunk_size=4096):
            with self.lock:
                if self.budget is not None and self.sent + len(data) > self.budget:
                    data = data[:self.budget - self.sent]
                    self.sent += len(data)
                    if data:
                        yield data
                    raise ConnectionError("connection cut")
                self.sent += len(data)
            yield bytes(b ^ 0xFF for b in data) if sha in self.tamper else data


def test_manifest_chunk_lists_round_trip_and_are_checked(tmp_path):
    f = file_entry(random_file(tmp_path / "model.onnx.data", 5 * CHUNK + 123, 1), "model.onnx.data", CHUNK)
    assert len(f.chunks) == 6 and sum(s for _, s in f.chunks) == f.size
    small = file_entry(random_file(tmp_path / "genai_config.json", 100, 2), "genai_config.json", CHUNK)
    assert small.chunks == () and small.chunk_spans() == [(small.sha256, 0, 100)]
    tok = FileEntry("tokenizer.json", "b" * 64, 1)
    m = Manifest(name="m", version="v1", precision="int4", files=(f, small, tok))
    assert Manifest.from_json(m.to_json()) == m
    bad = FileEntry(f.path, f.sha256, f.size + 1, f.chunks)
    with pytest.raises(ArtifactInvalid, match="chunks add up to"):
        Manifest(name="m", version="v1", precision="int4", files=(bad, small, tok)).validate()
    with pytest.raises(ArtifactInvalid, match="without a chunk list"):
        FileEntry("big", "c" * 64, 65 << 20).validate()
    raw = m.to_json().replace(b'"path":"tokenizer.json"', b'"path":"tokenizer.json","extra":1')
    with pytest.raises(ArtifactInvalid, match="unknown fields: extra"):
        Manifest.from_json(raw)


def test_plan_prefers_fetched_then_local_then_network():
    spans = [("a", 0, 10), ("b", 10, 10), ("c", 20, 10), ("a", 30, 10)]
    plan = plan_chunks(spans, lambda sha, size: sha == "a", {"b": (pathlib.Path("x"), 0, 10)})
    assert plan.resumed == ("a",) and plan.local == ("b",) and plan.download == (("c", 10),)


@pytest.mark.parametrize("seed", range(6))
def test_a_download_cut_at_a_random_byte_resumes_without_refetching_verified_chunks(tmp_path, seed):
    src = tmp_path / "src"
    src.mkdir()
    size = 9 * CHUNK + random.Random(seed).randrange(1, CHUNK)
    entry = file_entry(random_file(src / "model.onnx.data", size, seed), "model.onnx.data", CHUNK)
    server = Server(tmp_path / "cp", [entry], src)
    server.budget = random.Random(seed + 100).randrange(1, size)   # the cut
    cache = BlobCache(tmp_path / "agent", parallelism=3)
    with pytest.raises(ConnectionError):
        cache.fetch_all([entry], server.fetch_range)
    verified = {p.name for p in cache.chunks.iterdir() if "." not in p.name}
    parts = {p.name.split(".")[0]: p.stat().st_size for p in cache.chunks.glob("*.part")}
    for sha in verified:   # every chunk on disk after the cut is whole and correct
        assert hashlib.sha256(cache.chunk_path(sha).read_bytes()).hexdigest() == sha

    server.budget, first_requests = None, len(server.requests)
    stats = cache.fetch_all([entry], server.fetch_range)
    again = server.requests[first_requests:]
    assert not {sha for sha, _ in again} & verified, "a verified chunk was fetched again"
    for sha, offset in again:   # a chunk cut midway continues from where its part file ended
        assert offset == parts.get(sha, 0)
    assert server.sent == size, "some byte crossed the wire twice"
    assert stats.resumed_chunks == len(verified)
    assert hashlib.sha256(cache.path(entry.sha256).read_bytes()).hexdigest() == entry.sha256
    assert list(cache.chunks.iterdir()) == []   # chunk files are gone once the file is whole


def test_a_new_version_fetches_only_the_chunks_it_does_not_share(tmp_path):
    src1, src2 = tmp_path / "v1", tmp_path / "v2"
    src1.mkdir(), src2.mkdir()
    data = bytearray(random.Random(5).randbytes(8 * CHUNK))
    (src1 / "w.bin").write_bytes(data)
    data[3 * CHUNK + 7] ^= 1   # one byte changed: one chunk differs
    (src2 / "w.bin").write_bytes(data)
    e1, e2 = file_entry(src1 / "w.bin", "w.bin", CHUNK), file_entry(src2 / "w.bin", "w.bin", CHUNK)
    server = Server(tmp_path / "cp", [e1], src1)
    server.blobs.put_file_chunks(src2 / "w.bin", e2)
    cache = BlobCache(tmp_path / "agent")
    cache.fetch_all([e1], server.fetch_range)
    m1 = Manifest(name="m", version="v1", precision="int4", files=(e1,), base={"name": "b", "version": "v"},
                  adapters=({"name": "a", "path": "w.bin", "version": "1"},))
    server.requests.clear()
    stats = cache.fetch_all([e2], server.fetch_range, local=cache.local_index([m1]))
    assert [sha for sha, _ in server.requests] == [e2.chunks[3][0]]
    assert (stats.downloaded_chunks, stats.local_chunks) == (1, 7)

    os.truncate(cache.path(e1.sha256), 2 * CHUNK)   # a damaged local copy is not trusted: fetched instead
    (cache.path(e2.sha256)).unlink()
    server.requests.clear()
    stats = cache.fetch_all([e2], server.fetch_range, local=cache.local_index([m1]))
    assert stats.local_chunks == 0 and stats.downloaded_chunks == 8


def test_a_tampered_chunk_is_refused_and_the_good_ones_are_kept(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    entry = file_entry(random_file(src / "w.bin", 6 * CHUNK, 9), "w.bin", CHUNK)
    server = Server(tmp_path / "cp", [entry], src)
    bad = entry.chunks[4][0]
    server.tamper = {bad}
    cache = BlobCache(tmp_path / "agent", parallelism=1)
    with pytest.raises(ArtifactInvalid, match=re.escape(bad[:12])):
        cache.fetch_all([entry], server.fetch_range)
    assert not cache.chunk_path(bad).exists() and not cache.path(entry.sha256).exists()
    server.tamper = set()
    server.requests.clear()
    cache.fetch_all([entry], server.fetch_range)
    assert {sha for sha, _ in server.requests} == {bad}


def test_endless_data_within_a_chunk_is_cut_off(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    entry = file_entry(random_file(src / "w.bin", 3 * CHUNK, 3), "w.bin", CHUNK)
    cache = BlobCache(tmp_path / "agent")
    with pytest.raises(ArtifactInvalid, match="endless data"):
        cache.fetch_all([entry], lambda sha, offset: iter([b"x" * (CHUNK + 1)]))


def test_control_plane_stores_each_chunk_once_and_publish_uploads_only_new_chunks(cluster, tmp_path, tiny_int4):
    """An adapter-style new version (same base files, one new file) uploads no base chunk again."""
    import shutil

    from slmops.manifest import manifest_for_dir

    c = cluster
    c.start_cp()
    m1 = manifest_for_dir(tiny_int4, "tiny", "v1", "int4", chunk_bytes=CHUNK)
    c.admin.publish(tiny_int4, m1)
    base_chunks = sum(len(f.chunk_spans()) for f in m1.files)
    assert any(f.chunks for f in m1.files), "the tiny model should span several chunks at 16 KiB"
    assert c.admin.last_upload["chunks"] == len({s for f in m1.files for s, _, _ in f.chunk_spans()})
    v2 = tmp_path / "v2"
    shutil.copytree(tiny_int4, v2)
    random_file(v2 / "adapter.onnx_adapter", 3 * CHUNK, 4)
    m2 = manifest_for_dir(v2, "tiny", "v2", "int4", chunk_bytes=CHUNK)
    c.admin.publish(v2, m2)
    assert c.admin.last_upload["reused_chunks"] == base_chunks
    assert c.admin.last_upload["chunks"] == 3
    assert c.admin.last_upload["bytes"] == 3 * CHUNK


@pytest.mark.e2e
def test_agent_killed_mid_download_resumes_from_its_verified_chunks(cluster, tiny_int4):
    """Real gRPC over loopback, a slow link, SIGKILL while chunks arrive: after the restart the agent asks only
    for the chunks it had not verified, and serves the model."""
    cluster.start_cp(env={"SLMOPS_DEBUG_DOWNLOAD_DELAY_S": "0.4"})
    m = cluster.publish(tiny_int4, "tiny", "v1", chunk_bytes=CHUNK)
    spans = {sha for f in m.files for sha, _, _ in f.chunk_spans() if f.chunks}
    cluster.admin.set_desired("tiny", "v1")
    cluster.start_agent("a1")
    chunk_dir = cluster.root / "a1" / "blobs" / ".chunks"

    def verified():
        return {p.name for p in chunk_dir.glob("*") if "." not in p.name} if chunk_dir.exists() else set()

    cluster.wait_for(lambda: len(verified()) >= 3, timeout=60, what="a few chunks to arrive")
    cluster.agents["a1"][0].kill()
    kept = verified()
    whole = {f.path for f in m.files if (cluster.root / "a1" / "blobs" / f.sha256).exists()}
    # what is left: every chunk of each file not yet whole, less the chunks verified before the kill
    left = {sha for f in m.files if f.path not in whole for sha, _, _ in f.chunk_spans()} - kept
    assert kept and kept < spans, "the kill should land mid-download"
    cluster.restart_agent("a1")
    cluster.wait_serving("a1", m.ref, timeout=90)
    device = cluster.device("a1").device_id
    detail = cluster.wait_for(lambda: next((e.detail for e in cluster.admin.events(device)
                                            if e.name == "download"), None), what="the download event")
    got = re.search(r"in (\d+) chunks; .* (\d+) chunks resumed", detail)
    assert got, detail
    downloaded, resumed = int(got.group(1)), int(got.group(2))
    assert resumed == len(kept)
    assert downloaded == len(left)
    status, body = cluster.chat("a1")
    assert status == 200 and body["choices"][0]["message"]["content"]

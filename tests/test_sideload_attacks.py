"""Attacks through the sideload folder of a real agent process (control plane up, v1 serving): each bad drop
is refused with a clear event, the update thread neither dies nor blocks (a good bundle dropped afterwards
still installs), v1 keeps answering, and the agent's log holds no traceback."""
from __future__ import annotations

import gzip
import io
import json
import os
import sqlite3
import tarfile

import pytest

from control_plane.bundle_export import export_bundle
from tests.conftest import Cluster, variant

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def site(tiny_int4, tmp_path_factory):
    root = tmp_path_factory.mktemp("sideload-attacks")
    c = Cluster(root)
    try:
        c.start_cp()
        m0 = c.publish(variant(tiny_int4, root / "v0", 3), "tiny", "v0")   # older: built before v1
        m1 = c.publish(tiny_int4, "tiny", "v1")
        c.admin.set_desired("tiny", "v1")
        c.start_agent("a1", extra=["--probation", "1", "--resync", "1"])
        c.wait_serving("a1", m1.ref)
        bundles = {v: export_bundle(c.cp_dir, "tiny", v, root / f"tiny-{v}.slmops.tar") for v in ("v0", "v1")}
        yield c, m0, m1, bundles
    finally:
        c.stop()


def sideload_events(c) -> list[tuple[str, str]]:
    with sqlite3.connect(c.cp_dir / "control_plane.db") as db:
        up = [tuple(r) for r in db.execute("select name, detail from telemetry where kind = 'event'")]
    with sqlite3.connect(c.root / "a1" / "agent.db") as db:
        local = [tuple(r) for r in db.execute("select name, detail from outbox where kind = 'event'")]
    return up + local


def drop(c, name: str, make) -> None:
    """Writes the attack as NAME.part (make(path)) and renames it into place, as the folder's contract asks."""
    folder = c.root / "a1" / "sideload"
    part = folder / (name + ".part")
    make(part)
    os.rename(part, folder / name)


def expect_refusal(c, m1, tar_name: str, words: str) -> None:
    def refused():
        return any(n in ("verify_failed", "sideload") and tar_name in d and words in d
                   for n, d in sideload_events(c))
    c.wait_for(refused, timeout=60, what=f"the refusal of {tar_name} ({words})")
    status, body = c.chat("a1", max_tokens=4)
    assert status == 200 and body["model"] == m1.ref
    p, _ = c.agents["a1"]
    assert p.alive()
    assert "Traceback" not in p.log_path.read_text(errors="replace")


def tar_with(members: dict[str, bytes], extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra:
            extra(tar)
    return buf.getvalue()


def test_sideload_bundle_json_that_is_not_an_object(site):
    c, _, m1, _ = site
    drop(c, "list.slmops.tar", lambda p: p.write_bytes(tar_with({"bundle.json": b"[1, 2, 3]"})))
    expect_refusal(c, m1, "list.slmops.tar", "must be a JSON object")


def test_sideload_truncated_gzip(site):
    c, _, m1, bundles = site
    gz = gzip.compress(bundles["v1"].read_bytes(), compresslevel=1)
    drop(c, "cut.slmops.tar", lambda p: p.write_bytes(gz[: len(gz) // 2]))
    expect_refusal(c, m1, "cut.slmops.tar", "gzip-compressed")


def test_sideload_decompression_bomb(site):
    c, _, m1, _ = site
    zeros = tarfile.TarInfo("blobs/" + "0" * 64)
    zeros.size = 64 << 20   # 64 MiB of zeros in under 100 KB

    def bomb(path):
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
            with tarfile.open(fileobj=gz, mode="w|") as tar:
                info = tarfile.TarInfo("bundle.json")
                data = json.dumps({"format": 1, "name": "tiny", "version": "v9"}).encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                tar.addfile(zeros, _Zeros(zeros.size))
    drop(c, "bomb.slmops.tar", bomb)
    expect_refusal(c, m1, "bomb.slmops.tar", "compressed")
    assert not list((c.root / "a1" / "sideload-work").glob("*/blobs/*"))


def test_sideload_truncated_plain_tar(site):
    c, _, m1, bundles = site
    data = bundles["v1"].read_bytes()
    drop(c, "half.slmops.tar", lambda p: p.write_bytes(data[: len(data) // 2]))
    expect_refusal(c, m1, "half.slmops.tar", "truncated")


def test_sideload_member_that_claims_more_than_the_tar_holds(site):
    c, _, m1, _ = site
    data = bytearray(tar_with({"bundle.json": b"{}", "blobs/" + "a" * 64: b"x" * 10}))
    # rewrite the second header's size field to claim 4 GiB (octal, NUL-terminated), and fix its checksum
    h = 512 * 2
    data[h + 124:h + 136] = b"%011o\x00" % (4 << 30)
    data[h + 148:h + 156] = b" " * 8
    data[h + 148:h + 156] = b"%06o\x00 " % sum(data[h:h + 512])
    drop(c, "liar.slmops.tar", lambda p: p.write_bytes(bytes(data)))
    expect_refusal(c, m1, "liar.slmops.tar", "claims")


def test_sideload_fifo_in_the_folder(site):
    c, _, m1, _ = site
    drop(c, "fifo.slmops.tar", lambda p: os.mkfifo(p))
    expect_refusal(c, m1, "fifo.slmops.tar", "not a regular file")


def test_sideload_symlink_to_a_device_in_the_folder(site):
    c, _, m1, _ = site
    drop(c, "zero.slmops.tar", lambda p: os.symlink("/dev/zero", p))
    expect_refusal(c, m1, "zero.slmops.tar", "regular file")


def test_sideload_tar_holding_a_symlink_or_fifo(site):
    c, _, m1, _ = site

    def links(tar):
        for kind, name in ((tarfile.SYMTYPE, "metadata/timestamp.json"), (tarfile.FIFOTYPE, "blobs/x")):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info)
    drop(c, "links.slmops.tar", lambda p: p.write_bytes(tar_with({"bundle.json": b"{}"}, links)))
    expect_refusal(c, m1, "links.slmops.tar", "not a plain file")


def test_sideload_of_an_older_signed_version_is_refused(site):
    c, _, m1, bundles = site
    drop(c, "old.slmops.tar", lambda p: p.write_bytes(bundles["v0"].read_bytes()))
    expect_refusal(c, m1, "old.slmops.tar", "not newer than the serving tiny@v1")


def test_sideload_still_installs_a_good_bundle_after_the_attacks(site, tiny_int4, tmp_path):
    c, _, m1, _ = site
    m2 = c.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")
    good = export_bundle(c.cp_dir, "tiny", "v2", tmp_path / "tiny-v2.slmops.tar")
    c.cp.stop()   # air-gapped from here on (else the control plane's desired v1 would win again at once)
    drop(c, good.name, lambda p: p.write_bytes(good.read_bytes()))
    c.wait_serving("a1", m2.ref, timeout=120)
    c.wait_for(lambda: any(n == "sideload" and good.name in d and "committed" in d for n, d in sideload_events(c)),
               what="the sideload to commit")
    p, _ = c.agents["a1"]
    assert "Traceback" not in p.log_path.read_text(errors="replace")


class _Zeros(io.RawIOBase):
    def __init__(self, n):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n

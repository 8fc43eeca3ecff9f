"""Captures -> dataset (control_plane/capture_dataset.py and `slmops dataset from-captures`) over a real control
plane store: consent, window and selector, dedupe, redaction re-checked, filters, held-out split and provenance;
the files load with training/dataset.py; empty or all-duplicate results are refused with the counts."""
import hashlib
import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from control_plane import capture_dataset as cd
from control_plane.store import Store
from tests.pg_fixtures import pg_server, pg_url  # noqa: F401  (fixtures)
from training.dataset import load_jsonl

runner = CliRunner()
T0 = 1_800_000_000_000


def cap(device, seq, ts, prompt, response="an answer", model="support@v1"):
    return {"device_id": device, "seq": seq, "ts_ms": ts, "model": model, "adapter": "",
            "detail": json.dumps({"messages": [{"role": "user", "content": prompt}], "response": response,
                                  "finish_reason": "stop"})}


def test_build_keeps_only_consenting_in_window_distinct_readable_captures():
    rows = [cap("a", 1, T0, "How do I bake bread?"),
            cap("a", 2, T0 + 1, "how do  I bake BREAD?"),                        # duplicate once normalised
            cap("off", 1, T0 + 2, "What is sourdough?"),                          # capture disabled there
            cap("a", 3, T0 - 10, "Too early?"),
            cap("a", 4, T0 + 3, "Mail me at ann@example.com please", "ok ann@example.com"),
            cap("a", 5, T0 + 4, "Empty?", response=" "),
            cap("a", 6, T0 + 5, "x" * 50),
            cap("a", 7, T0 + 6, "Как испечь хлеб?"),
            cap("a", 8, T0 + 7, "Other model?", model="chat@v3"),
            {"device_id": "a", "seq": 9, "ts_ms": T0 + 8, "model": "support@v1", "adapter": "", "detail": "{bad"},
            cap("a", 10, T0 + 9, "Which flour for rye bread?")]
    f = cd.Filters(since_ms=T0, model="support", max_chars=40, script="latin", heldout_fraction=0.0)
    res = cd.build(rows, {"a"}, f)
    c = res.counts
    assert c["read"] == 11 and c["kept"] == 3
    assert (c["dropped: duplicate"], c["dropped: capture disabled on device"], c["dropped: empty answer"],
            c["dropped: prompt length"], c["dropped: script"], c["dropped: unreadable capture"]) == (1, 1, 1, 1, 1, 1)
    assert c["dropped: outside selector or window"] == 2 and c["redacted again"] == 1
    texts = [r["messages"][0]["content"] for r in res.train]
    assert texts == ["How do I bake bread?", "Mail me at [email] please", "Which flour for rye bread?"]
    assert res.train[1]["messages"][-1] == {"role": "assistant", "content": "ok [email]"}
    prov = res.train[0]["provenance"]
    assert (prov["device_id"], prov["seq"], prov["ts_ms"], prov["model"]) == ("a", 1, T0, "support@v1")
    assert len(prov["capture_sha256"]) == 64


def test_tool_call_answers_are_kept_as_the_call_the_recipes_learn():
    from slmops.chat_format import CHATML, ChatFormat

    def tool_cap(seq, prompt, calls):
        return {"device_id": "a", "seq": seq, "ts_ms": T0 + seq, "model": "support@v1", "adapter": "",
                "detail": json.dumps({"messages": [{"role": "user", "content": prompt}], "response": "",
                                      "finish_reason": "tool_calls", "tool_calls": calls})}
    rows = [tool_cap(1, "Open a ticket for the K2", [{"name": "open_ticket", "arguments": '{"device": "K2"}'}]),
            tool_cap(2, "Call me on 555 123 4567", [{"name": "call", "arguments": '{"to": "555 123 4567"}'}]),
            tool_cap(3, "Broken call?", [{"name": "x", "arguments": "{not json"}]),
            cap("a", 4, T0 + 4, "Empty?", response="")]
    res = cd.build(rows, {"a"}, cd.Filters(heldout_fraction=0.0))
    c = res.counts
    assert c["kept"] == 2 and c["tool-call answers"] == 2 and c["dropped: unreadable tool call"] == 1
    assert c["dropped: empty answer"] == 1
    answer = res.train[0]["messages"][-1]
    assert answer == {"role": "assistant", "content": ChatFormat.from_dict(CHATML).tool_calls_text(
        [{"name": "open_ticket", "arguments": {"device": "K2"}}])}
    assert answer["content"] == '<tool_call>\n{"name": "open_ticket", "arguments": {"device": "K2"}}\n</tool_call>'
    assert "555" not in json.dumps(res.train[1])   # redaction holds inside the call too


def test_language_filter_drops_other_languages_and_keeps_undetermined_prompts():
    from slmops.language import language_of

    assert [language_of(t) for t in (
        "How do I reset the pump on my K3?", "Was bedeutet die Warnleuchte W5 an meinem K3?",
        "Que signifie le voyant W5 sur mon K3 ?", "¿Qué significa la luz W5 en mi K3?",
        "Как испечь хлеб?", "Kestrel K3 W5?")] == ["en", "de", "fr", "es", "script:cyrillic", None]
    rows = [cap("a", 1, T0, "How do I reset the pump on my K3?"),
            cap("a", 2, T0 + 1, "Was bedeutet die Warnleuchte W5 an meinem K3?"),
            cap("a", 3, T0 + 2, "Kestrel K3 W5?"),
            cap("a", 4, T0 + 3, "Как испечь хлеб?")]
    res = cd.build(rows, {"a"}, cd.Filters(language="en", heldout_fraction=0.0))
    assert [r["messages"][0]["content"] for r in res.train] == ["How do I reset the pump on my K3?", "Kestrel K3 W5?"]
    assert res.counts["dropped: language"] == 2 and res.counts["language undetermined (kept)"] == 1
    de = cd.build(rows, {"a"}, cd.Filters(language="de", heldout_fraction=0.0, min_records=1))
    assert [r["messages"][0]["content"] for r in de.train] == ["Was bedeutet die Warnleuchte W5 an meinem K3?",
                                                                "Kestrel K3 W5?"]
    assert len(cd.build(rows, {"a"}, cd.Filters(heldout_fraction=0.0)).train) == 4   # "any": no filter
    with pytest.raises(cd.ConfigError, match="language 'klingon' is not one of any, en, de"):
        cd.Filters(language="klingon")


def test_held_out_split_is_repeatable_and_never_empty():
    rows = [cap("a", i, T0 + i, f"question number {i} about bread") for i in range(40)]
    one = cd.build(rows, {"a"}, cd.Filters(heldout_fraction=0.25))
    two = cd.build(rows, {"a"}, cd.Filters(heldout_fraction=0.25))
    assert one.heldout == two.heldout and 3 <= len(one.heldout) <= 20 and len(one.train) + len(one.heldout) == 40
    small = cd.build(rows[:2], {"a"}, cd.Filters(heldout_fraction=0.01))
    assert len(small.heldout) == 1 and len(small.train) == 1


def test_empty_and_all_duplicate_datasets_are_refused_with_the_counts():
    rows = [cap("a", 1, T0, "How do I bake bread?"), cap("b", 1, T0, "What is rye?")]
    with pytest.raises(cd.DatasetRefused, match="would be empty: dropped: capture disabled on device 2"):
        cd.build(rows, set(), cd.Filters())
    known = frozenset({cd.prompt_key("How do I bake bread?"), cd.prompt_key("what is RYE?")})
    with pytest.raises(cd.DatasetRefused, match="would be all duplicates: dropped: already in training data 2"):
        cd.build(rows, {"a", "b"}, cd.Filters(), known)
    with pytest.raises(cd.DatasetRefused, match="only 1 distinct record.*dropped: duplicate 1"):
        cd.build([rows[0], rows[0]], {"a"}, cd.Filters())
    for bad, words in ((dict(max_chars=0), "length filter"), (dict(script="greek"), "script 'greek'"),
                       (dict(heldout_fraction=1.0), "held-out fraction"), (dict(min_records=0), "min_records")):
        with pytest.raises(cd.ConfigError, match=words):
            cd.Filters(**bad)


def originals(path, prompts) -> list[dict]:
    path.write_text("".join(json.dumps({"input": q, "output": f"answer to {q}", "answer_key": "answer"}) + "\n"
                            for q in prompts))
    return cd.read_originals([str(path)])


def test_replay_mixes_a_seeded_share_of_the_original_data_deduped_against_the_captures(tmp_path):
    rows = [cap("a", i, T0 + i, f"new topic question {i}") for i in range(30)]
    old = originals(tmp_path / "old.jsonl", [f"old topic question {i}" for i in range(40)]
                    + ["New topic question 3", "old topic  QUESTION 7"])   # one captured prompt, one repeated
    res = cd.build(rows, {"a"}, cd.Filters(heldout_fraction=0.25))
    captured_train, heldout = list(res.train), list(res.heldout)
    mixed = cd.replay(res, old, cd.Replay((str(tmp_path / "old.jsonl"),), share=0.4), seed=0)
    replayed = [r for r in mixed.train if r["provenance"]["source"] == "replay"]
    assert mixed.train[:len(captured_train)] == captured_train and mixed.heldout == heldout   # held-out: captures
    assert len(replayed) == round(0.4 * len(captured_train) / 0.6) == mixed.counts["replayed"]
    assert mixed.counts["replay: dropped, prompt also captured"] == 1
    assert mixed.counts["replay: dropped, duplicate"] == 1
    assert all(r["messages"][0]["content"].startswith("old topic") for r in replayed)
    first = replayed[0]
    assert first["messages"][-1]["content"] == f"answer to {first['messages'][0]['content']}"   # its own answer
    assert first["answer_key"] == "answer" and first["provenance"]["file"] == str(tmp_path / "old.jsonl")
    line = (tmp_path / "old.jsonl").read_text().splitlines()[first["provenance"]["line"] - 1]
    assert json.loads(line)["input"] == first["messages"][0]["content"]
    assert first["provenance"]["file_sha256"] == hashlib.sha256((tmp_path / "old.jsonl").read_bytes()).hexdigest()
    assert mixed.replay["files"][str(tmp_path / "old.jsonl")] == {
        "sha256": first["provenance"]["file_sha256"], "records": 42, "replayed": len(replayed)}

    def chosen(seed):
        r = cd.replay(cd.build(rows, {"a"}, cd.Filters(heldout_fraction=0.25)), old,
                      cd.Replay((str(tmp_path / "old.jsonl"),), 0.4), seed)
        return [x["messages"][0]["content"] for x in r.train if x["provenance"]["source"] == "replay"]
    assert chosen(0) == [r["messages"][0]["content"] for r in replayed] and chosen(1) != chosen(0)   # seeded
    few = cd.replay(cd.build(rows, {"a"}, cd.Filters(heldout_fraction=0.25)), old[:3],
                    cd.Replay(("old.jsonl",), 0.9), 0)
    assert few.replay["records"] == 3 < few.replay["wanted"]   # fewer than asked: all of them, and it says so
    info = cd.write(mixed, tmp_path / "ds", cd.Filters(heldout_fraction=0.25))
    assert info["replay"]["records"] == len(replayed) and len(load_jsonl(tmp_path / "ds" / "train.jsonl")) == \
        len(mixed.train)
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["replay"]["share"] == 0.4
    for bad, words in ((dict(files=()), "needs the original training data"), (dict(files=("x",), share=0.0),
                                                                              "replay share 0.0")):
        with pytest.raises(cd.ConfigError, match=words):
            cd.Replay(**bad)


def run(*args, ok=True):
    r = runner.invoke(app, list(args), env={"COLUMNS": "80"})
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    if ok:
        assert r.exit_code == 0, r.output
        return r.stdout
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code != 0 and len(errors) == 1, r.output
    return errors[0]


def event(e: dict, kind: str, vals: dict | None = None) -> dict:
    return {"seq": e["seq"], "ts_ms": e["ts_ms"], "kind": kind, "name": "chat", "model": e.get("model", ""),
            "latency_ms": 1.0, "first_token_ms": 1.0, "tokens_in": 1, "tokens_out": 1, "outcome": "ok",
            "detail": e.get("detail", ""), "adapter": "", "values": vals or {}}


def test_from_captures_writes_what_the_recipes_read_and_honours_withdrawn_consent(tmp_path):
    cp = tmp_path / "cp"
    cp.mkdir()
    store = Store(cp / "control_plane.db")
    now = cd_now()
    for dev, rate in (("on", 0.5), ("withdrawn", 0.0)):
        store.add_telemetry(dev, [event(cap(dev, i, now - 60_000 + i, f"{dev} question {i} on bread"), "capture")
                                  for i in range(1, 11)])
        # the device's latest sample decides: "withdrawn" captured, then turned capture off
        store.add_telemetry(dev, [event({"seq": 100, "ts_ms": now - 90_000}, "sample", {"capture_rate": 0.5}),
                                  event({"seq": 101, "ts_ms": now - 1_000}, "sample", {"capture_rate": rate})])
    train_file = tmp_path / "old.jsonl"
    train_file.write_text(json.dumps({"input": "on question 1 on bread", "output": "x"}) + "\n")
    out = tmp_path / "ds"
    info = json.loads(run("dataset", "from-captures", str(out), "--cp-data-dir", str(cp), "--since", "1h",
                          "--model", "support@v1", "--heldout", "0.3", "--exclude-data", str(train_file), "--json"))
    assert info["counts"]["kept"] == 9 and info["counts"]["dropped: capture disabled on device"] == 10
    assert info["counts"]["dropped: already in training data"] == 1
    train, held = load_jsonl(out / "train.jsonl"), load_jsonl(out / "heldout.jsonl")
    assert len(train) + len(held) == 9 and held
    assert all(ex.fields["provenance"]["device_id"] == "on" for ex in train + held)
    assert info["files"]["train.jsonl"]["records"] == len(train)
    line = run("dataset", "from-captures", str(tmp_path / "none"), "--cp-data-dir", str(cp), "--model", "other",
               ok=False)
    assert "would be empty" in line and "dropped: outside selector or window 10" in line
    assert not (tmp_path / "none").exists()
    assert "no control plane data" in run("dataset", "from-captures", str(out), "--cp-data-dir",
                                          str(tmp_path / "x"), ok=False)
    assert "script 'greek'" in run("dataset", "from-captures", str(out), "--cp-data-dir", str(cp), "--script",
                                   "greek", ok=False)
    assert "language 'xx'" in run("dataset", "from-captures", str(out), "--cp-data-dir", str(cp), "--language",
                                  "xx", ok=False)
    english = json.loads(run("dataset", "from-captures", str(tmp_path / "en"), "--cp-data-dir", str(cp),
                             "--language", "en", "--json"))
    assert english["filters"]["language"] == "en" and english["counts"]["kept"] == 10
    assert "--exclude-data" in run("dataset", "from-captures", str(out), "--cp-data-dir", str(cp),
                                   "--exclude-data", str(tmp_path / "missing.jsonl"), ok=False)
    mixed = json.loads(run("dataset", "from-captures", str(tmp_path / "mixed"), "--cp-data-dir", str(cp),
                           "--replay", str(train_file), "--replay-share", "0.5", "--json"))
    assert mixed["counts"]["replay: dropped, prompt also captured"] == 1 and mixed["replay"]["records"] == 0
    assert "--replay" in run("dataset", "from-captures", str(out), "--cp-data-dir", str(cp), "--replay",
                             str(tmp_path / "missing.jsonl"), ok=False)
    assert "replay share 1.0" in run("dataset", "from-captures", str(out), "--cp-data-dir", str(cp), "--replay",
                                     str(train_file), "--replay-share", "1", ok=False)


def cd_now() -> int:
    from control_plane.store import now_ms

    return now_ms()


@pytest.mark.pg
def test_from_captures_reads_a_control_plane_on_postgresql(tmp_path, pg_url):  # noqa: F811
    store = Store(pg_url)
    now = cd_now()
    store.add_telemetry("on", [event(cap("on", i, now - 60_000 + i, f"question {i} on bread"), "capture")
                               for i in range(1, 6)])
    store.add_telemetry("on", [event({"seq": 100, "ts_ms": now - 1_000}, "sample", {"capture_rate": 0.5})])
    empty = tmp_path / "cp"   # the data folder holds no SQLite file: the state is in PostgreSQL
    empty.mkdir()
    info = json.loads(run("dataset", "from-captures", str(tmp_path / "ds"), "--cp-data-dir", str(empty),
                          "--state", pg_url, "--json"))
    assert info["counts"]["kept"] == 5
    assert "no control plane data" in run("dataset", "from-captures", str(tmp_path / "x"), "--cp-data-dir",
                                          str(empty), ok=False)

"""Issue 17's loop on tiny models and real processes: a fleet serves v1 (trained on the support data), traffic moves
to a topic v1 never saw (Kestrel K3 warning lights), the input drift signal crosses its threshold (/metrics,
`slmops drift`), the captures become a dataset, the shipped pipeline recipe has a teacher that knows the topic
answer the captured prompts, distils a student (half of its data replayed from the original training data),
evaluates it on the captured held-out slice and on the original held-out set, gates, publishes and canaries it as
v2; on the held-out slice of the shifted traffic v2 answers more of the questions right than v1, and on the
original held-out set it is no more than the recipe's margin below v1 (it did not forget)."""
from __future__ import annotations

import hashlib
import json
import pathlib
import re
import subprocess
import sys
import urllib.request

import pytest
from typer.testing import CliRunner

from cli.main import app
from control_plane.procs import free_port, http_json
from tests.test_pipeline_e2e import wait_status
from tests.test_telemetry_e2e import start_cp_with_http
from training.publish import data_profile

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]
ROOT = pathlib.Path(__file__).resolve().parents[1]
ORIGINAL = ROOT / "training/data/support_train.jsonl"   # v1's training data: replayed into v2's
RECIPE = ROOT / "training/recipes/pipeline_from_captures_tiny.yaml"
KEYS = ("fan", "pump", "door", "fuse", "valve", "lamp")
MEANINGS = ("the fan is blocked", "the pump is dry", "the door is open", "the fuse blew", "the valve is stuck",
            "the lamp is worn")
CODES = range(1, 13)


def key_of(prompt: str) -> str:
    return KEYS[int(re.search(r"W(\d+)", prompt).group(1)) % len(KEYS)]


def teacher_data(path: pathlib.Path) -> None:
    """What the teacher (a stand-in for a bigger model) was trained on: two phrasings of every code."""
    rows = []
    for n in CODES:
        answer = f"Warning light W{n} means {MEANINGS[n % len(KEYS)]}."
        for q in (f"Kestrel K3 warning light W{n}?", f"What does warning light W{n} on the K3 mean?"):
            rows.append({"input": q, "output": answer, "answer_key": KEYS[n % len(KEYS)]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def traffic() -> list[str]:
    """What devices are asked after the shift: three phrasings of every code (the third one the teacher never saw)."""
    return [q for n in CODES for q in (f"Kestrel K3 warning light W{n}?", f"What does warning light W{n} on the "
                                       f"K3 mean?", f"so what does warning light W{n} mean on my K3")]


def cli(*args: str) -> str:
    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "80"})
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    return r.stdout


def accuracy(port: int, prompts: list[str]) -> float:
    right = 0
    for p in prompts:
        status, body = http_json(f"http://127.0.0.1:{port}/v1/chat/completions",
                                 {"messages": [{"role": "user", "content": p}], "max_tokens": 16, "temperature": 0})
        assert status == 200, body
        right += key_of(p) in body["choices"][0]["message"]["content"].lower()
    return right / len(prompts)


def test_shifted_traffic_becomes_a_distilled_canary_that_answers_it_better(cluster, tiny_hf, tiny_int4, tmp_path):
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    for name in (".venv", "training"):   # the recipe's relative paths resolve under the submit folder
        (work / name).symlink_to(ROOT / name)
    (work / "runs" / "v1").mkdir()
    (work / "runs" / "v1" / "model").symlink_to(tiny_hf)   # v1's Hugging Face folder (tiny_int4 is its export)
    teacher_data(tmp_path / "k3.jsonl")
    subprocess.run([sys.executable, "-m", "cli", "train", "training/recipes/full_tiny_text_template.yaml",
                    "--set", "base.source=hf", "--set", f"base.path={tiny_hf}", "--set",
                    f"data.train={tmp_path / 'k3.jsonl'}", "--set", "data.template=chatml", "--set",
                    "train.max_steps=120", "--set", "train.epochs=100", "--set", "train.lr=3.0e-3", "--set",
                    "train.grad_accum=1", "--set", "train.gradient_checkpointing=false", "--set",
                    "train.early_stopping_patience=0", "--set", "train.save_every=0", "--set", "eval.heldout=null",
                    "--set", "data.val_fraction=0.1", "--output", str(work / "runs" / "teacher"), "--no-progress"],
                   cwd=ROOT, check=True, capture_output=True, timeout=1200)

    http_port = free_port()
    start_cp_with_http(cluster, http_port)
    v1 = cluster.publish(tiny_int4, "support", "v1",
                         metrics={"data_profile": data_profile([ROOT / "training/data/support_train.jsonl"])})
    cluster.admin.set_desired("support", "v1")
    for name in ("edge-a", "edge-b"):
        cluster.start_agent(name, extra=["--sample-interval", "1", "--capture-rate", "1"])
        cluster.wait_serving(name, v1.ref)
    for i, prompt in enumerate(traffic()):
        status, body = cluster.chat(("edge-a", "edge-b")[i % 2], prompt)
        assert status == 200, body

    crossed = 'slmops_cp_drift_crossed{group="input",model="support@v1",signal="input_lexical_js"} 1.0'

    def metrics() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
            return r.read().decode()
    cluster.wait_for(lambda: crossed in metrics(), timeout=180, what="the input drift gauge over its threshold")
    assert re.search(r"input_lexical_js .*DRIFT", cli("drift", "support@v1", "--cp-data-dir", str(cluster.cp_dir)))

    info = json.loads(cli("dataset", "from-captures", str(work / "runs" / "captured"), "--cp-data-dir",
                          str(cluster.cp_dir), "--model", "support@v1", "--heldout", "0.25", "--replay",
                          str(ORIGINAL), "--replay-share", "0.5", "--json"))
    assert info["counts"]["kept"] == len(traffic())
    records = [json.loads(ln) for ln in (work / "runs" / "captured" / "train.jsonl").read_text().splitlines()]
    replayed = [r for r in records if r["provenance"]["source"] == "replay"]
    assert len(replayed) == info["replay"]["records"] == info["counts"]["replayed"] == len(records) // 2
    assert all(r["provenance"]["file"] == str(ORIGINAL) and r["answer_key"] for r in replayed)
    heldout = [json.loads(ln)["messages"][0]["content"]
               for ln in (work / "runs" / "captured" / "heldout.jsonl").read_text().splitlines()]
    assert len(heldout) >= 4
    trained_on = {json.loads(ln)["messages"][0]["content"]
                  for ln in (work / "runs" / "captured" / "train.jsonl").read_text().splitlines()}
    assert trained_on and not trained_on & set(heldout)   # the held-out slice is never trained on

    job = cluster.admin.submit_pipeline(RECIPE.read_text(), str(work))
    job = wait_status(cluster, job.job_id, ("succeeded", "failed"), timeout=1200)
    assert job.status == "succeeded", job.reason
    assert [s.kind for s in job.stages].count("evaluate") == 2   # the captured slice and the original held-out set
    captured, original, gate = (json.loads(job.stages[i].metrics_json) for i in (1, 2, 4))
    # the slice is scored against the teacher's answers (its records hold only v1's), v2 and v1 alike
    assert captured["references"] == f"the answers of {work / 'runs' / 'teacher' / 'model'}"
    assert captured["examples"] == len(heldout) and captured["compared"]["model"] == str(work / "runs/v1/model")
    print(f"captured slice vs the teacher's answers: v2 ROUGE-L {captured['rouge_l']:.3f}, "
          f"v1 {captured['compared']['rouge_l']:.3f}; original set ({original['examples']} records): "
          f"v2 {original['rouge_l']:.3f}, v1 {original['compared']['rouge_l']:.3f}")
    assert captured["rouge_l_gain"] >= 0.05 and captured["compare_floor"] == {"min_gain_over_compare": 0.05,
                                                                              "passed": True}
    # no forgetting: on the original held-out set (all of it) v2 is within the recipe's margin of v1
    assert original["heldout"] == str(work / "training/data/support_heldout.jsonl") and original["examples"] == 26
    assert original["compare_floor"] == {"max_loss_vs_compare": 0.05, "passed": True}
    assert original["rouge_l"] >= original["compared"]["rouge_l"] - 0.05
    assert len(gate["sets"]) == 2 and all(len(t["sets"]) == 2 for t in gate["tried"] if t["metrics"])
    v2 = job.published
    assert v2.startswith("support@v-")
    from control_plane.store import Store

    row = Store(cluster.cp_dir / "control_plane.db").model(*v2.split("@"))
    learned = json.loads(row["manifest"])["metrics"]["training_data"]   # lineage: v2 names the captures
    assert [d["dataset"]["source"] for d in learned] == ["captures"]
    assert learned[0]["sha256"] == info["files"]["train.jsonl"]["sha256"]
    assert learned[0]["dataset"]["replay"]["files"][str(ORIGINAL)]["sha256"] == \
        hashlib.sha256(ORIGINAL.read_bytes()).hexdigest()   # and the original data it replayed
    profile = json.loads(row["manifest"])["metrics"]["data_profile"]   # v2's baseline is the captured traffic
    assert profile["records"] == info["files"]["train.jsonl"]["records"]
    devices = cluster.wait_for(lambda: (ds := cluster.admin.devices()) and sorted(
        f"{d.current.name}@{d.current.version}" for d in ds) == sorted([v1.ref, v2]) and ds, timeout=180,
        what="one canary on v2, the other device still on v1")
    port = {name: p for name, (_, p) in cluster.agents.items()}
    on = {f"{d.current.name}@{d.current.version}": port[d.name] for d in devices}
    acc_v1, acc_v2 = accuracy(on[v1.ref], heldout), accuracy(on[v2], heldout)
    print(f"held-out slice of the shifted traffic ({len(heldout)} prompts): v1 {acc_v1:.2f}, v2 {acc_v2:.2f}")
    assert acc_v2 > acc_v1

"""Pipelines with real processes: a control plane that trains, evaluates, exports, gates, publishes and rolls
out a tiny model to a real agent; a control plane killed mid-pipeline that resumes the job; cancel; crashing and
out-of-memory stages; the torchrun executor with 2 processes."""
from __future__ import annotations

import json
import os
import pathlib

import pytest
import yaml

from control_plane.admin_client import AdminError

pytestmark = pytest.mark.e2e
ROOT = pathlib.Path(__file__).resolve().parent.parent
RECIPE = ROOT / "training" / "recipes" / "pipeline_tiny.yaml"


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> str:
    """The tiny base is built once and shared by the tests' training stages."""
    return str(tmp_path_factory.mktemp("pipeline-model-cache"))


def recipe(model_cache: str, *, rollout: bool = True, train_set=(), train_extra: dict | None = None,
           name: str = "support-tiny", stages=None) -> str:
    d = yaml.safe_load(RECIPE.read_text())
    d["name"] = name
    train = d["stages"][0]["train"]
    train["set"] = [*train["set"], f"cache_dir={model_cache}", *train_set]
    train.update(train_extra or {})
    if not rollout:
        d["stages"] = [s for s in d["stages"] if "rollout" not in s]
    if stages is not None:
        d["stages"] = [s for s in d["stages"] if next(iter(s)) in stages]
    return yaml.safe_dump(d, sort_keys=False)


def wait_status(cluster, job_id: str, statuses, timeout: float, what: str = ""):
    return cluster.wait_for(lambda: (p := cluster.admin.pipeline(job_id)).status in statuses and p,
                            timeout=timeout, what=what or f"pipeline {job_id} to reach {statuses}")


def running_worker(cluster, job_id: str, kind: str = "train", timeout: float = 120) -> int:
    """The pid of the job's worker for `kind` once it is running."""
    def pid():
        stage = next(s for s in cluster.admin.pipeline(job_id).stages if s.kind == kind)
        if stage.status != "running":
            return None
        rows = [ln.line for ln in cluster.admin.pipeline_logs(job_id) if ln.stage == stage.index]
        found = [int(x.split()[2]) for x in rows if x.startswith("worker pid ")]
        return found[-1] if found and any("starting" in x for x in rows) else None
    return cluster.wait_for(pid, timeout=timeout, what=f"the {kind} worker of {job_id} running")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return pathlib.Path(f"/proc/{pid}").exists() and \
        "zombie" not in pathlib.Path(f"/proc/{pid}/status").read_text().lower()


def test_recipe_to_fleet_publishes_and_rolls_out_to_a_real_agent(cluster, model_cache):
    cluster.start_cp()
    cluster.start_agent("edge1")
    cluster.wait_for(lambda: cluster.admin.devices(), what="the agent enrolling")

    p = cluster.admin.submit_pipeline(recipe(model_cache), str(ROOT))
    assert [s.kind for s in p.stages] == ["train", "evaluate", "export", "gate", "publish", "rollout"]
    lines = []
    for ln in cluster.admin.pipeline_logs(p.job_id, follow=True, timeout=600):   # --follow until it finishes
        lines.append(ln.line)
    p = cluster.admin.pipeline(p.job_id)
    assert p.status == "succeeded", (p.reason, lines[-30:])
    assert [s.status for s in p.stages] == ["done"] * 6
    assert p.published.startswith("support@v-") and p.rollout_id.startswith("ro_")
    gate = json.loads(p.stages[3].metrics_json)
    assert gate["chosen"] in ("int4", "fp32") and gate["tried"][0]["precision"] == "int4"
    evaluate = json.loads(p.stages[1].metrics_json)
    assert evaluate["examples"] == 4 and evaluate["perplexity"] > 1
    assert json.loads(p.stages[0].outputs_json)["model_dir"].endswith("/model")
    assert any("stage 0 train: done" in ln for ln in lines) and any("published support@v-" in ln for ln in lines)

    r = cluster.admin.rollout(p.rollout_id)
    assert r.status == "completed" and r.created_by == f"pipeline:{p.job_id}"
    cluster.wait_serving("edge1", p.published, timeout=60)
    status, body = cluster.chat("edge1")
    assert status == 200 and body["model"] == p.published
    assert any(e.action == "SubmitPipeline" and e.result == "OK" for e in cluster.admin.audit(action="SubmitPipeline"))


def test_killed_control_plane_resumes_the_job_and_a_rerun_skips_done_stages(cluster, model_cache):
    cluster.start_cp()
    p = cluster.admin.submit_pipeline(recipe(model_cache, rollout=False, train_set=["train.max_steps=60"]),
                                      str(ROOT))
    pid = running_worker(cluster, p.job_id)
    cluster.cp.kill()                                  # SIGKILL mid-training: no chance to clean up
    cluster.wait_for(lambda: not alive(pid), timeout=30, what="the orphaned worker to die with its control plane")
    cluster.start_cp()

    p = wait_status(cluster, p.job_id, ("succeeded", "failed"), timeout=600)
    assert p.status == "succeeded", p.reason
    assert p.resumes == 1
    assert "resumed after a control plane restart (interrupted stage 0 train)" in \
        [ln.line for ln in cluster.admin.pipeline_logs(p.job_id)]
    assert p.stages[0].attempts == 2 and p.published.startswith("support@v-")

    again = cluster.admin.submit_pipeline(recipe(model_cache, rollout=False, train_set=["train.max_steps=60"]),
                                          str(ROOT))
    again = wait_status(cluster, again.job_id, ("succeeded", "failed"), timeout=120)
    assert again.status == "succeeded", again.reason
    assert [s.status for s in again.stages] == ["skipped"] * 5 and all(s.cached for s in again.stages)
    assert again.published == p.published           # same content, same version: nothing new to publish
    assert len(cluster.admin.models()) == 1


def test_cancel_stops_the_worker_and_publishes_nothing(cluster, model_cache):
    cluster.start_cp()
    p = cluster.admin.submit_pipeline(recipe(model_cache, rollout=False, train_set=["train.max_steps=5000"]),
                                      str(ROOT))
    pid = running_worker(cluster, p.job_id)
    assert cluster.admin.cancel_pipeline(p.job_id).status == "cancelling"
    p = wait_status(cluster, p.job_id, ("cancelled",), timeout=60)
    assert [s.status for s in p.stages] == ["cancelled", "pending", "pending", "pending", "pending"]
    cluster.wait_for(lambda: not alive(pid), timeout=15, what="the worker to stop")
    assert not cluster.admin.models() and not p.published
    stages_dir = cluster.cp_dir / "pipelines" / "stages"
    assert not any(stages_dir.iterdir()), "the cancelled stage's partial outputs must be gone"
    with pytest.raises(AdminError) as e:
        cluster.admin.cancel_pipeline(p.job_id)
    assert e.value.code.name == "FAILED_PRECONDITION"


def test_crashing_and_out_of_memory_stages_fail_their_jobs_with_the_log_tail(cluster, model_cache, tmp_path):
    cluster.start_cp(["--pipeline-jobs", "2"])
    crash = recipe(model_cache, rollout=False, name="crash", train_set=["base.path=" + str(tmp_path / "nowhere"),
                                                                        "base.source=hf"])
    oom = recipe(model_cache, rollout=False, name="oom", train_extra={"resources": {"memory_mb": 300}})
    a = cluster.admin.submit_pipeline(crash, str(ROOT))
    b = cluster.admin.submit_pipeline(oom, str(ROOT))
    a = wait_status(cluster, a.job_id, ("failed",), timeout=180)
    b = wait_status(cluster, b.job_id, ("failed",), timeout=180)
    assert a.reason.startswith("stage 0 train failed: the worker exited with status 1; log tail:")
    assert "nowhere" in a.reason and a.stages[0].status == "failed"
    assert "memory limit 300 MB" in b.reason and ("MemoryError" in b.reason or "memory" in b.reason.lower())
    assert not cluster.admin.models()
    assert cluster.cp.alive()
    ok = cluster.admin.submit_pipeline(recipe(model_cache, rollout=False, stages=("train",), name="after"),
                                       str(ROOT))
    ok = wait_status(cluster, ok.job_id, ("succeeded", "failed"), timeout=300)
    assert ok.status == "succeeded", ok.reason


def test_torchrun_executor_trains_with_two_processes(cluster, model_cache):
    cluster.start_cp()
    text = recipe(model_cache, rollout=False, stages=("train",), name="ddp",
                  train_extra={"executor": {"kind": "torchrun", "nproc_per_node": 2}})
    p = cluster.admin.submit_pipeline(text, str(ROOT))
    p = wait_status(cluster, p.job_id, ("succeeded", "failed"), timeout=400)
    assert p.status == "succeeded", p.reason
    lines = [ln.line for ln in cluster.admin.pipeline_logs(p.job_id)]
    assert any("(torchrun, 2 processes)" in ln for ln in lines)
    assert any("world 2" in ln for ln in lines), lines[:20]
    metrics = json.loads(p.stages[0].metrics_json)
    assert metrics["train"]["default"]["processes"] == 2


def test_invalid_recipe_is_refused_with_every_error_listed(cluster):
    cluster.start_cp()
    bad = {"name": "bad", "stages": [
        {"train": {"recipe": "training/recipes/lora_tiny.yaml", "set": ["lora.rank=0"]}},
        {"export": {"precisions": ["int3"]}},
        {"publish": {"name": "support", "version": "{nope}"}},
        {"rollout": {"strategy": "waves", "selector": {}}}]}
    with pytest.raises(AdminError) as e:
        cluster.admin.submit_pipeline(yaml.safe_dump(bad), str(ROOT))
    assert e.value.code.name == "INVALID_ARGUMENT"
    d = e.value.details
    for where in ("stages[0].train.recipe:", "stages[1].export.precisions[0]:", "stages[2].publish:",
                  "stages[2].publish.version:", "stages[3].rollout.selector:", "stages[3].rollout.waves:"):
        assert where in d, d
    assert not cluster.admin.pipelines()


CHAIN = ROOT / "training" / "recipes" / "pipeline_chain_tiny.yaml"


def chain_recipe(model_cache: str, last_steps: int = 4) -> str:
    d = yaml.safe_load(CHAIN.read_text())
    trains = [s["train"] for s in d["stages"] if "train" in s]
    trains[0]["set"] = [*trains[0]["set"], f"cache_dir={model_cache}"]
    trains[-1]["set"] = [*trains[-1]["set"], f"train.max_steps={last_steps}"]
    return yaml.safe_dump(d, sort_keys=False)


def test_chained_train_stages_feed_each_other_and_a_retry_skips_the_finished_ones(cluster, model_cache):
    """full fine-tune (teacher) -> distill (teacher data + student) -> LoRA on the student -> evaluate -> export
    -> gate -> publish, through the real queue; then the same chain with only its last train stage changed."""
    cluster.start_cp()
    p = cluster.admin.submit_pipeline(chain_recipe(model_cache), str(ROOT))
    kinds = ["train", "train", "train", "evaluate", "export", "gate", "publish"]
    assert [s.kind for s in p.stages] == kinds
    p = wait_status(cluster, p.job_id, ("succeeded", "failed"), timeout=900)
    lines = [ln.line for ln in cluster.admin.pipeline_logs(p.job_id)]
    assert p.status == "succeeded", (p.reason, lines[-30:])
    assert [s.status for s in p.stages] == ["done"] * 7
    outs = [json.loads(s.outputs_json) for s in p.stages]
    ins = [json.loads(s.inputs_json) for s in p.stages]
    assert ins[1]["model_dir"] == outs[0]["model_dir"] and ins[2]["model_dir"] == outs[1]["model_dir"]
    assert len({outs[0]["model_dir"], outs[1]["model_dir"], outs[2]["model_dir"]}) == 3
    assert ins[3]["model_dir"] == outs[2]["model_dir"], "evaluate sees the last model of the chain"
    teacher = json.loads(pathlib.Path(outs[0]["model_dir"], "config.json").read_text())
    student = json.loads(pathlib.Path(outs[1]["model_dir"], "config.json").read_text())
    assert student["num_hidden_layers"] == 1 < teacher["num_hidden_layers"]
    assert json.loads(p.stages[1].metrics_json)["teacher_outputs"]["train"]["total"] > 0   # teacher data
    assert any(ln.startswith("base: ") and "the teacher" in ln for ln in lines), lines
    assert p.published.startswith("support-chain@v-")

    again = cluster.admin.submit_pipeline(chain_recipe(model_cache, last_steps=5), str(ROOT))
    again = wait_status(cluster, again.job_id, ("succeeded", "failed"), timeout=600)
    assert again.status == "succeeded", again.reason
    assert [s.status for s in again.stages] == ["skipped", "skipped"] + ["done"] * 5
    assert [s.key for s in again.stages[:2]] == [s.key for s in p.stages[:2]]
    assert again.stages[2].key != p.stages[2].key
    assert json.loads(again.stages[2].inputs_json)["model_dir"] == outs[1]["model_dir"], \
        "the re-run stage starts from the reused student"
    assert again.published != p.published and len(cluster.admin.models()) == 2

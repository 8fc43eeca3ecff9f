"""One way to prepare a publish: the manifest of an exported, gated folder. Used by `slmops models publish`,
the pipelines' publish stage and the demo, so the three cannot drift apart.

A variant that failed (or never ran) the quality gate, or whose files changed since, is never published.
The training data profile (slmops/text_profile.py: prompt lengths, hashed n-grams, optionally a sample of sentence
embeddings) goes into the manifest's metrics as `data_profile`, the baseline of the input drift signals."""
from __future__ import annotations

import json
import pathlib

from slmops import text_profile
from slmops.errors import ArtifactInvalid
from slmops.manifest import DEFAULT_CHUNK_BYTES, Manifest, manifest_for_dir
from training.quality_gate import check_publishable


def publishable_manifest(bundle_dir: pathlib.Path, name: str, version: str,
                         chunk_bytes: int = DEFAULT_CHUNK_BYTES, profile_data: list | None = None,
                         semantic: bool = False, **extra) -> Manifest:
    """The signed-to-be manifest of `bundle_dir` as NAME@VERSION: its files, chunks, precision and execution
    provider (from export_info.json), the gate's metrics, and its runtime adapters (adapters.json).
    `profile_data`: the training files to profile (default: those in the source model's lineage.json);
    `semantic` adds embeddings to the profile (training/embed.py).
    Raises quality_gate.GateError (gate missing, failed, or files changed) or ArtifactInvalid."""
    bundle_dir = pathlib.Path(bundle_dir)
    info = bundle_dir / "export_info.json"
    if not info.exists():
        raise ArtifactInvalid(f"{bundle_dir} has no export_info.json; export it with `slmops export` first")
    try:
        exp = json.loads(info.read_text())
        adapters = bundle_dir / "adapters.json"
        adapter_list = tuple(json.loads(adapters.read_text())) if adapters.exists() else ()
    except ValueError as e:
        raise ArtifactInvalid(f"{bundle_dir}: {e}") from e
    verdict = check_publishable(bundle_dir)
    metrics = {"quality_gate": verdict["metrics"], "reference": verdict["reference"]}
    metrics |= learned_from(exp, profile_data, semantic)
    return manifest_for_dir(bundle_dir, name, version, exp["precision"], chunk_bytes=chunk_bytes,
                            execution_provider=exp["execution_provider"], metrics=metrics,
                            adapters=adapter_list, **extra)


def learned_from(source: dict, profile_data: list | None, semantic: bool) -> dict:
    """The manifest metrics about the training data: its profile (from `source`'s files, or `profile_data`) and
    what the model learned from (lineage), each only when known."""
    out = {}
    prof = data_profile(training_files(source) if profile_data is None else profile_data, semantic)
    if prof:
        out["data_profile"] = prof
    trained_on = training_data(source)
    if trained_on:
        out["training_data"] = trained_on
    return out


def adapter_manifest(gated_dir: pathlib.Path, name: str, version: str, base: dict, adapter_version: str = "1",
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES, peft_dir: pathlib.Path | None = None,
                     profile_data: list | None = None, semantic: bool = False) -> tuple[Manifest, pathlib.Path]:
    """The manifest of an adapter-only version from the folder training/adapter_gate.py gated, and the folder to
    upload (only the adapter file). Refused like a full model: no verdict, a failed one, or a file changed since.
    The metrics carry the gate's (candidate, fp32 merged reference, verdict), the training data profile and what
    it learned from (from `peft_dir`'s lineage.json, or `profile_data`)."""
    gated_dir = pathlib.Path(gated_dir)
    verdict = check_publishable(gated_dir)
    try:
        report = json.loads((gated_dir / "gate_report.json").read_text())
        base_info = json.loads((pathlib.Path(report["base_dir"]) / "export_info.json").read_text())
        adapter, rel = report["adapter"], report["file"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactInvalid(f"{gated_dir} is not a gated adapter folder (training/adapter_gate.py): {e}") from e
    source = {"source": str(peft_dir)} if peft_dir else {}
    metrics = {"quality_gate": verdict["metrics"], "reference": verdict["reference"],
               "adapter_gate": {k: report[k] for k in ("passed", "reasons", "precision") if k in report}
               | {"reference": report["reference"]["what"]}}
    metrics |= learned_from(source, profile_data, semantic)
    bundle = gated_dir / pathlib.Path(rel).parent
    m = manifest_for_dir(bundle, name, version, base_info["precision"], chunk_bytes=chunk_bytes,
                         execution_provider=base_info["execution_provider"], metrics=metrics, base=base,
                         adapters=({"name": adapter, "path": pathlib.Path(rel).name, "version": adapter_version},))
    return m, bundle


def training_files(export_info: dict) -> list[pathlib.Path]:
    """The data files the exported model was trained on, from its source folder's lineage.json (none if the
    model has no lineage, e.g. a base model exported as it is)."""
    lineage = pathlib.Path(export_info.get("source", "")) / "lineage.json"
    try:
        return [pathlib.Path(d.get("resolved") or d["path"]) for d in json.loads(lineage.read_text()).get("data", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def training_data(export_info: dict) -> list[dict]:
    """What the version learned from, for its manifest: each data file's path and sha256 from the lineage, and for
    a dataset made from captures (`slmops dataset from-captures`, dataset.json beside it) where it came from."""
    lineage = pathlib.Path(export_info.get("source", "")) / "lineage.json"
    try:
        data = json.loads(lineage.read_text()).get("data", [])
    except (OSError, ValueError):
        return []
    out = []
    for d in data if isinstance(data, list) else []:
        if not isinstance(d, dict) or "path" not in d:
            continue
        entry = {"path": str(d["path"]), "sha256": str(d.get("sha256", ""))}
        info = pathlib.Path(d.get("resolved") or d["path"]).parent / "dataset.json"
        try:
            ds = json.loads(info.read_text())
            files = {name: f.get("sha256") for name, f in ds.get("files", {}).items()}
            if entry["sha256"] in files.values():   # this file is the one that dataset.json describes
                entry["dataset"] = {"source": ds.get("source"), "counts": ds.get("counts"), "files": files,
                                    "filters": {k: v for k, v in ds.get("filters", {}).items() if k != "device_ids"}}
                if ds.get("replay"):   # the original data mixed in: each file's sha256 and how many records
                    entry["dataset"]["replay"] = ds["replay"]
        except (OSError, ValueError, AttributeError):
            pass
        out.append(entry)
    return out


def data_profile(files: list, semantic: bool = False) -> dict | None:
    """The profile of every prompt in `files` (JSONL, the shapes training/dataset.py reads); None if none."""
    from training.dataset import load_jsonl

    prompts = [text_profile.prompt_text(ex.fields) for f in files if pathlib.Path(f).is_file()
               for ex in load_jsonl(f)]
    if not prompts:
        return None
    emb = None
    if semantic:
        from training.embed import profile_embedding

        emb = profile_embedding(prompts)
    return text_profile.profile(prompts, emb)

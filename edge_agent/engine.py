"""The inference engine seam: onnxruntime-genai behind a small interface. It knows nothing of HTTP,
queues or telemetry; it turns a prompt into a stream of text pieces.
"""
from __future__ import annotations

import json
import logging
import pathlib
from dataclasses import dataclass
from typing import Callable, Iterator

from slmops.chat_format import ChatFormat
from slmops.errors import ModelLoadError, RequestInvalid
from slmops.manifest import Manifest

log = logging.getLogger("slmops.agent.engine")


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # (kind, data) for onnxruntime-genai guidance: ("json_schema", schema JSON) | ("regex", ...) | ("lark_grammar", ...)
    guidance: tuple[str, str] | None = None
    top_logprobs: int | None = None   # None: no logprobs; k >= 0: each token's logprob and the k most likely


class GrammarRefused(RequestInvalid):
    """onnxruntime-genai's grammar engine could not build the requested constraint (the request's fault)."""


@dataclass
class Generation:
    """Iterate for text pieces; after iteration, finish_reason and token counts are set."""
    pieces: Iterator[str]
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str = ""
    ended_by_model: bool = False   # the model ended it (end of sequence; under guidance: the grammar is complete)
    # per generated token, with top_logprobs set: {"token", "logprob", "bytes", "top_logprobs": [{...}]}, the
    # model's own distribution (log-softmax of its logits, before temperature, top-k/p and guidance masks)
    logprobs: list = None

    def __iter__(self):
        return self.pieces


# Execution providers by the name the agent's config uses -> the name onnxruntime-genai's Config takes.
EXECUTION_PROVIDERS = {"cpu": "cpu", "cuda": "cuda", "dml": "dml", "webgpu": "WebGPU", "openvino": "OpenVINO",
                       "qnn": "QNN", "nvtensorrtrtx": "NvTensorRtRtx", "vitisai": "VitisAI"}


class OgaEngine:
    def __init__(self, model_dir: pathlib.Path, manifest: Manifest, providers: tuple[str, ...] = ("cpu",)):
        import onnxruntime_genai as og

        self.og = og
        self.manifest = manifest
        self.model_dir = pathlib.Path(model_dir)
        # The first provider in the preference list that loads the model serves it; each one passed over is kept
        # (with onnxruntime-genai's reason) in `fallbacks` and logged, so the device can say why it runs on cpu.
        self.fallbacks: list[tuple[str, str]] = []
        self.provider = ""
        for p in providers:
            if p not in EXECUTION_PROVIDERS:
                raise ModelLoadError(f"unknown execution provider {p!r}; known: {', '.join(EXECUTION_PROVIDERS)}")
            try:
                cfg = og.Config(str(self.model_dir))
                cfg.clear_providers()
                if p != "cpu":
                    cfg.append_provider(EXECUTION_PROVIDERS[p])
                self.model = og.Model(cfg)
                self.tokenizer = og.Tokenizer(self.model)
            except Exception as e:  # og raises RuntimeError/OSError with C++ messages; map once here
                reason = " ".join(str(e).split()) or type(e).__name__
                self.fallbacks.append((p, reason))
                rest = providers[providers.index(p) + 1:]
                if rest:
                    log.warning("execution provider %s cannot load %s (%s); trying %s", p, manifest.ref, reason,
                                rest[0])
                continue
            self.provider = p
            break
        else:
            tried = "; ".join(f"{p}: {reason}" for p, reason in self.fallbacks)
            raise ModelLoadError(f"cannot load {manifest.ref} from {self.model_dir} on any execution provider "
                                 f"of {','.join(providers) or '(none given)'} (tried {tried or 'nothing'})")
        if self.fallbacks:
            log.info("%s runs on execution provider %s", manifest.ref, self.provider)
        # LoRA adapters are loaded once per engine and chosen per request (generator.set_active_adapter).
        self.adapters = og.Adapters(self.model)
        self.adapter_versions: dict[str, str] = {}
        for a in manifest.adapters:
            self.load_adapter(self.model_dir / a["path"], a["name"], a["version"])
        genai = json.loads((self.model_dir / "genai_config.json").read_text())
        self.context_length = int(genai["model"].get("context_length") or genai["search"]["max_length"])
        self.chat = ChatFormat.from_dict(manifest.chat_format)
        eos = genai["model"].get("eos_token_id")
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos])

    def load_adapter(self, path: pathlib.Path, name: str, version: str) -> None:
        """Makes `name` selectable per request; an adapter that does not fit the model is a ModelLoadError."""
        try:
            self.adapters.load(str(path), name)
            # og only checks names and shapes when a generator runs with the adapter: probe one token now, so a
            # misfit adapter fails the load (and the update) instead of a request.
            gp = self.og.GeneratorParams(self.model)
            gp.set_search_options(max_length=2)
            probe = self.og.Generator(self.model, gp)
            probe.set_active_adapter(self.adapters, name)
            probe.append_tokens([0])
            del probe
        except Exception as e:
            raise ModelLoadError(f"cannot load adapter {name!r} from {path} into {self.manifest.ref}: {e}") from e
        self.adapter_versions[name] = version

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def generate(self, prompt: str, params: SamplingParams, cancelled: Callable[[], bool] = lambda: False,
                 adapter: str | None = None) -> Generation:
        og = self.og
        tokens = self.tokenizer.encode(prompt)
        max_length = min(self.context_length, len(tokens) + params.max_new_tokens)
        gp = og.GeneratorParams(self.model)
        opts = {"max_length": max_length, "repetition_penalty": params.repetition_penalty}
        if params.temperature > 0:
            opts.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
            if params.seed is not None:
                opts["random_seed"] = int(params.seed)
        else:
            opts["do_sample"] = False
        gp.set_search_options(**opts)
        if params.guidance:
            gp.set_guidance(*params.guidance)
        gen = Generation(pieces=iter(()), prompt_tokens=len(tokens), logprobs=[])
        try:  # the grammar is compiled here: a schema llguidance cannot build is the request's fault
            generator = og.Generator(self.model, gp)
        except RuntimeError as e:
            if params.guidance and "grammar" in str(e).lower():
                raise GrammarRefused(" ".join(str(e).split())) from None
            raise
        top = params.top_logprobs

        def run() -> Iterator[str]:
            nonlocal generator
            if adapter:
                generator.set_active_adapter(self.adapters, adapter)
            stream = self.tokenizer.create_stream()
            generator.append_tokens(tokens)
            text = ""
            gen.finish_reason = "length"
            try:
                while not generator.is_done():
                    if cancelled():
                        gen.finish_reason = "cancelled"
                        return
                    logits = generator.get_logits() if top is not None else None  # what the next token is drawn from
                    generator.generate_next_token()
                    tok = generator.get_next_tokens()[0]
                    gen.completion_tokens += 1
                    piece = stream.decode(tok)
                    if self._is_eos(tok) or (generator.is_done() and gen.completion_tokens + len(tokens) < max_length):
                        gen.finish_reason = "stop"  # end-of-sequence token, not the length limit
                        gen.ended_by_model = True
                        piece = "" if self._is_eos(tok) else piece
                    if logits is not None and not (gen.ended_by_model and self._is_eos(tok)):
                        gen.logprobs.append(self._logprobs(logits, int(tok), top, piece))
                    if params.stop and piece:
                        text += piece
                        hit = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
                        if hit >= 0:
                            cut = len(text) - len(piece)
                            if hit > cut:
                                yield text[cut:hit]
                            gen.finish_reason = "stop"
                            return
                    if piece:
                        yield piece
            finally:
                del generator

        gen.pieces = run()
        return gen

    def _logprobs(self, logits, tok: int, top: int, piece: str) -> dict:
        """The chosen token is named by the text it added to the answer (so the tokens join to the answer; a
        special token adds none); the alternatives by their own decoding."""
        import numpy as np

        row = np.asarray(logits, dtype=np.float64).reshape(-1, logits.shape[-1])[-1]
        m = row.max()
        lp = row - (m + np.log(np.exp(row - m).sum()))
        entry = {"token": piece, "logprob": float(lp[tok]), "bytes": list(piece.encode("utf-8"))}
        best = np.argpartition(-lp, top)[:top] if 0 < top < len(lp) else np.arange(len(lp) if top else 0)
        entry["top_logprobs"] = [self._token_entry(int(i), float(lp[i])) for i in best[np.argsort(-lp[best])]]
        return entry

    def _token_entry(self, tok: int, logprob: float) -> dict:
        text = self.tokenizer.decode([tok])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def _is_eos(self, tok: int) -> bool:
        return int(tok) in self.eos_ids

    def close(self) -> None:
        del self.adapters
        del self.model

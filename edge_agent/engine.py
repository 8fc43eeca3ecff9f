"""The inference engine seam: onnxruntime-genai behind a small interface. It knows nothing of HTTP,
queues or telemetry; it turns a prompt into a stream of text pieces.
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Callable, Iterator

from slmops.chat_format import ChatFormat
from slmops.errors import ModelLoadError
from slmops.manifest import Manifest


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Generation:
    """Iterate for text pieces; after iteration, finish_reason and token counts are set."""
    pieces: Iterator[str]
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str = ""

    def __iter__(self):
        return self.pieces


class OgaEngine:
    def __init__(self, model_dir: pathlib.Path, manifest: Manifest, providers: tuple[str, ...] = ("cpu",)):
        import onnxruntime_genai as og

        self.og = og
        self.manifest = manifest
        self.model_dir = pathlib.Path(model_dir)
        try:
            cfg = og.Config(str(self.model_dir))
            cfg.clear_providers()
            for p in providers:
                if p != "cpu":
                    cfg.append_provider(p)
            self.model = og.Model(cfg)
            self.tokenizer = og.Tokenizer(self.model)
        except Exception as e:  # og raises RuntimeError/OSError with C++ messages; map once here
            raise ModelLoadError(f"cannot load {manifest.ref} from {self.model_dir}: {e}") from e
        self.provider = providers[0]
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
        gen = Generation(pieces=iter(()), prompt_tokens=len(tokens))

        def run() -> Iterator[str]:
            generator = og.Generator(self.model, gp)
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
                    generator.generate_next_token()
                    tok = generator.get_next_tokens()[0]
                    gen.completion_tokens += 1
                    piece = stream.decode(tok)
                    if generator.is_done() and gen.completion_tokens + len(tokens) < max_length:
                        gen.finish_reason = "stop"  # end-of-sequence token, not the length limit
                        piece = "" if self._is_eos(tok) else piece
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

    def _is_eos(self, tok: int) -> bool:
        return int(tok) in self.eos_ids

    def close(self) -> None:
        del self.adapters
        del self.model

"""The inference engine seam: onnxruntime-genai behind a small interface. It knows nothing of HTTP,
queues or telemetry; it turns a prompt into a stream of text pieces.
"""
from __future__ import annotations

import json
import logging
import pathlib
import threading
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from edge_agent.batching import END, Batcher, Job, Member, batch_key
from edge_agent.prefix_cache import Entry, PrefixCache
from slmops.chat_format import ChatFormat
from slmops.errors import ModelLoadError, RequestInvalid
from slmops.manifest import Manifest
from slmops.threads import set_threads

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
    def __init__(self, model_dir: pathlib.Path, manifest: Manifest, providers: tuple[str, ...] = ("cpu",),
                 max_batch: int = 4, batch_wait_s: float = 0.01, on_batch: Callable[[int], None] | None = None,
                 prefix_cache_entries: int = 2, prefix_headroom: int = 512, threads: int = 0):
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
                self.threads = set_threads(cfg, threads)
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
        pad = genai["model"].get("pad_token_id", min(self.eos_ids))
        self.pad_id = int(pad[0] if isinstance(pad, list) else pad)
        self.prefix_cache = PrefixCache(prefix_cache_entries)
        self.prefix_headroom = prefix_headroom
        self.batcher = Batcher(self._run_batch, max_batch, self.context_length, batch_wait_s, on_batch=on_batch,
                               name=f"batch-{manifest.version}")

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
        return self.generate_n(prompt, params, 1, cancelled, adapter)[0]

    def generate_n(self, prompt: str, params: SamplingParams, n: int = 1,
                   cancelled: Callable[[], bool] = lambda: False, adapter: str | None = None) -> list[Generation]:
        """`n` answers to one prompt. Jobs that may share a batch (batching.batch_key) go to the batcher and
        run beside other requests; the rest (guidance, seeded sampling) run here, on the caller's thread, as one
        batch of n rows. A grammar onnxruntime-genai cannot build is a GrammarRefused from this call."""
        tokens = list(self.tokenizer.encode(prompt))
        if params.guidance and n > 1:
            # onnxruntime-genai's grammar serves one row per generator (a batch fails once one row's grammar is
            # done): n generators, one after another; row i of a seeded request samples with seed + i.
            return [g for i in range(n) for g in self.generate_n(
                prompt, replace(params, seed=None if params.seed is None else params.seed + i), 1, cancelled,
                adapter)]
        gens = [Generation(pieces=iter(()), prompt_tokens=len(tokens), logprobs=[]) for _ in range(n)]
        job = Job(tokens, params, adapter, cancelled, [Member(generation=g) for g in gens])
        if batch_key(params, adapter) is None:
            steps = self._steps([job], self._start([job]))
            left = [n]   # the rows still read: the generation is closed when the last reader stops
            stepping = threading.Lock()   # rows may be read on several threads (a stream of n > 1): one steps

            def release() -> None:
                left[0] -= 1
                if not left[0]:
                    steps.close()
            for g, m in zip(gens, job.members):
                g.pieces = self._drain(m, steps, release, stepping)
        else:
            self.batcher.submit(job)
            for g, m in zip(gens, job.members):
                g.pieces = self._drain(m)
        return gens

    @staticmethod
    def _drain(member: Member, steps: Iterator[None] | None = None,
               release: Callable[[], None] = lambda: None, stepping: threading.Lock | None = None) -> Iterator[str]:
        """A member's pieces. With `steps` the generation runs on the reading thread (one token step per pull,
        under `stepping`: the step another row's reader takes may be the one this row waits for); without, the
        batcher's worker fills the member's queue."""
        try:
            while True:
                while steps is not None and member.out.empty():   # a step may add no piece (partial UTF-8)
                    with stepping:
                        if member.out.empty() and next(steps, END) is END:
                            break
                item = member.out.get()
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                piece, logprobs = item
                member.generation.logprobs.extend(logprobs)   # on the reader's side: they ride with their piece
                if piece:
                    yield piece
        finally:
            release()

    def _run_batch(self, jobs: list[Job]) -> None:
        """The batcher's worker: run the batch to its end."""
        for _ in self._steps(jobs, self._start(jobs)):
            pass

    def _start(self, jobs: list[Job]) -> "_Started":
        """Makes the generator for a batch of jobs (compatible by batching.batch_key; one row per member), or
        for a single row takes one from the prefix cache that already holds the start of its tokens."""
        og = self.og
        p = jobs[0].params
        rows = sum(j.rows for j in jobs)
        width = max(len(j.tokens) for j in jobs)
        need = width + max(j.params.max_new_tokens for j in jobs)
        key = batch_key(p, jobs[0].adapter) if rows == 1 else None   # cacheable: one row, plain settings
        if key is not None:
            hit = self.prefix_cache.take(key, jobs[0].tokens, min(need, self.context_length))
            if hit is not None:
                entry, keep = hit
                entry.generator.rewind_to(keep)
                return _Started(entry.generator, entry.max_length, width, key, keep)
            # room for the next turn of the conversation, so the cached state can serve it
            need += self.prefix_headroom
        max_length = min(self.context_length, need)
        gp = og.GeneratorParams(self.model)
        opts = {"max_length": max_length, "repetition_penalty": p.repetition_penalty, "batch_size": rows}
        if p.temperature > 0:
            opts.update(do_sample=True, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k)
            if p.seed is not None:
                opts["random_seed"] = int(p.seed)
        else:
            opts["do_sample"] = False
        gp.set_search_options(**opts)
        if p.guidance:
            gp.set_guidance(*p.guidance)
        try:  # the grammar is compiled here: a schema llguidance cannot build is the request's fault
            generator = og.Generator(self.model, gp)
        except RuntimeError as e:
            if p.guidance and "grammar" in str(e).lower():
                raise GrammarRefused(" ".join(str(e).split())) from None
            raise
        if jobs[0].adapter:
            generator.set_active_adapter(self.adapters, jobs[0].adapter)
        return _Started(generator, max_length, width, key, 0)

    def _steps(self, jobs: list[Job], started: "_Started") -> Iterator[None]:
        """Prefill, then one token step per iteration for every row; each row stops on its own (end of
        sequence, stop string, its max_new_tokens, its request cancelled) and gets END; the batch ends when every
        row has. A single row that ended normally leaves its generator in the prefix cache."""
        import numpy as np

        generator, max_length, width = started.generator, started.max_length, started.width
        rows = [_Row(self, job, m) for job in jobs for m in job.members]
        cache = False
        try:
            if len(rows) == 1:
                generator.append_tokens(jobs[0].tokens[started.kept:])
            else:  # right-padded with the pad id (onnxruntime-genai masks it), as Tokenizer.encode_batch pads
                ids = np.full((len(rows), width), self.pad_id, dtype=np.int32)
                for i, r in enumerate(rows):
                    ids[i, :len(r.job.tokens)] = r.job.tokens
                generator.append_tokens(ids)
            solo = len(rows) == 1
            while not generator.is_done():
                for r in rows:
                    if r.open and r.job.cancelled():
                        r.finish("cancelled")
                if not any(r.open for r in rows):
                    break
                logits = generator.get_logits() if any(r.top is not None and r.open for r in rows) else None
                generator.generate_next_token()
                toks = generator.get_next_tokens()
                # Under guidance the grammar's end shows only as the generator's end before the length limit.
                grammar_end = solo and generator.is_done()
                for i, r in enumerate(rows):
                    if r.open:
                        try:
                            r.feed(int(toks[i]), None if logits is None else logits[i], grammar_end, max_length)
                        except Exception as e:  # this row's request fails; its neighbours go on
                            log.error("a batch row failed: %s: %s", type(e).__name__, e)
                            r.fail(e)
                if not any(r.open for r in rows):
                    break
                yield
            cache = started.key is not None and rows[0].gen.finish_reason not in ("cancelled", "error")
        except Exception as e:   # the model failed: every row still open fails with it (never a quiet END)
            for r in rows:
                if r.open:
                    r.fail(e)
            raise
        finally:
            for r in rows:
                if r.open:
                    r.finish(r.gen.finish_reason or "length")
            if cache:
                self.prefix_cache.put(Entry(started.key, list(generator.get_sequence(0)), max_length, generator))
            del generator

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
        self.batcher.close()
        self.prefix_cache.clear()
        del self.adapters
        del self.model


@dataclass
class _Started:
    generator: object
    max_length: int
    width: int              # the padded prompt length
    key: tuple | None       # prefix-cache key (a single row with plain settings), else None
    kept: int               # prompt tokens already in the generator's state (a prefix-cache hit)


class _Row:
    """One row of a running batch: turns its tokens into text pieces on its member's queue."""

    def __init__(self, engine: OgaEngine, job: Job, member: Member):
        self.engine, self.job, self.member = engine, job, member
        self.gen = member.generation
        self.params = job.params
        self.top = job.params.top_logprobs
        self.stream = engine.tokenizer.create_stream()
        self.text = ""      # with stop strings: the answer so far; `sent` chars of it are out
        self.sent = 0
        self.open = True
        self.pending: list = []   # logprob entries of tokens not yet sent with a piece
        self.gen.finish_reason = ""

    def put(self, piece: str) -> None:
        self.member.out.put((piece, self.pending))
        self.pending = []

    def fail(self, error: Exception) -> None:
        self.open = False
        self.gen.finish_reason = "error"
        self.member.out.put(error)

    def finish(self, reason: str, flush: bool = True) -> None:
        """Ends the row; text held back as a possible start of a stop string goes out (unless cut by one)."""
        self.gen.finish_reason = reason
        self.open = False
        held = self.text[self.sent:] if flush and reason != "cancelled" else ""
        if held or self.pending:
            self.put(held)
        self.member.out.put(END)

    def feed(self, tok: int, logits, grammar_end: bool, max_length: int) -> None:
        e, gen, p = self.engine, self.gen, self.params
        gen.completion_tokens += 1
        piece = self.stream.decode(tok)
        eos = e._is_eos(tok)
        if eos or (grammar_end and gen.completion_tokens + len(self.job.tokens) < max_length):
            gen.ended_by_model = True   # end-of-sequence token (or the grammar's end), not the length limit
            piece = "" if eos else piece
        if logits is not None and self.top is not None and not (gen.ended_by_model and eos):
            self.pending.append(e._logprobs(logits, tok, self.top, piece))
        if p.stop and piece:
            # Text that may be the start of a stop string is held back until it is known not to be one, so a
            # stop string that spans pieces never leaks its beginning.
            self.text += piece
            hit = min((i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in p.stop) if i >= 0),
                      default=-1)
            if hit >= 0:
                if hit > self.sent or self.pending:
                    self.put(self.text[self.sent:max(hit, self.sent)])
                self.sent = len(self.text)
                return self.finish("stop", flush=False)
            safe = len(self.text) - held_suffix(self.text, p.stop)
            piece, self.sent = self.text[self.sent:safe], max(self.sent, safe)
        if piece:
            self.put(piece)
        if gen.ended_by_model:
            self.finish("stop")
        elif gen.completion_tokens >= p.max_new_tokens:
            self.finish("length")


def held_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins some stop string (and so may become one)."""
    for n in range(min(len(text), max(len(s) for s in stops) - 1), 0, -1):
        if any(s.startswith(text[-n:]) for s in stops):
            return n
    return 0

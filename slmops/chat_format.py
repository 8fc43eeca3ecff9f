"""The prompt format a model was trained with, as plain data, shared by training and the agent.

No Jinja: a template is two format strings, so the agent (which must stay light) and the trainer
render prompts identically. SmolLM2 uses ChatML; the tiny test models are trained with it too.
"""
from __future__ import annotations

from dataclasses import dataclass

CHATML = {
    "message": "<|im_start|>{role}\n{content}<|im_end|>\n",
    "generation_prompt": "<|im_start|>assistant\n",
    "stop": ["<|im_end|>"],
}


@dataclass(frozen=True)
class ChatFormat:
    message: str
    generation_prompt: str
    stop: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict) -> "ChatFormat":
        return cls(d["message"], d["generation_prompt"], tuple(d.get("stop", ())))

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        text = "".join(self.message.format(role=m["role"], content=m["content"]) for m in messages)
        return text + (self.generation_prompt if add_generation_prompt else "")

"""The prompt format a model was trained with, as plain data, shared by training and the agent.

No Jinja: a template is a few format strings, so the agent (which must stay light) and the trainer
render prompts identically. SmolLM2 uses ChatML; the tiny test models are trained with it too.
Tools follow the convention of ChatML models that were trained on them (Qwen2.5 and Hermes): the functions are
listed in a system message, an assistant's call is a JSON object {"name", "arguments"} inside <tool_call> tags,
and a tool's result goes back as a user turn inside <tool_response> tags. A manifest's chat_format may set these
keys (TOOL_DEFAULTS) for a model trained on another convention; without them it gets these defaults.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

TOOL_DEFAULTS = {
    "tools_system": "Functions you may call:\n{tools}\nTo call one, answer only <tool_call>{{\"name\": NAME, "
                    "\"arguments\": {{...}}}}</tool_call>",
    "tool_call": "<tool_call>\n{call}\n</tool_call>",
    "tool_result_role": "user",
    "tool_result": "<tool_response>\n{content}\n</tool_response>",
}

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
    tools_system: str = TOOL_DEFAULTS["tools_system"]
    tool_call: str = TOOL_DEFAULTS["tool_call"]
    tool_result_role: str = TOOL_DEFAULTS["tool_result_role"]
    tool_result: str = TOOL_DEFAULTS["tool_result"]

    @classmethod
    def from_dict(cls, d: dict) -> "ChatFormat":
        return cls(d["message"], d["generation_prompt"], tuple(d.get("stop", ())),
                   **{k: d.get(k, v) for k, v in TOOL_DEFAULTS.items()})

    def render(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] = ()) -> str:
        """`tools`: OpenAI function specs ({"name", "description", "parameters"}) shown to the model in a system
        message (joined to the first system message when there is one). Assistant messages may carry
        `tool_calls` ([{"name", "arguments"}]); `tool` messages are results."""
        messages = list(messages)
        if tools:
            listing = self.tools_system.format(tools="\n".join(json.dumps(t, separators=(",", ":")) for t in tools))
            if messages and messages[0]["role"] == "system":
                messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + listing}
            else:
                messages.insert(0, {"role": "system", "content": listing})
        text = "".join(self.message.format(**self._turn(m)) for m in messages)
        return text + (self.generation_prompt if add_generation_prompt else "")

    def _turn(self, m: dict) -> dict:
        if m["role"] == "tool":
            return {"role": self.tool_result_role, "content": self.tool_result.format(content=m["content"])}
        if m.get("tool_calls"):
            calls = self.tool_calls_text(m["tool_calls"])
            return {"role": m["role"], "content": (m["content"] + "\n" if m["content"] else "") + calls}
        return {"role": m["role"], "content": m["content"]}

    def tool_calls_text(self, calls: list[dict]) -> str:
        """An assistant's calls ([{"name", "arguments"}]) as the text the model writes for them."""
        return "\n".join(self.tool_call.format(call=json.dumps({"name": c["name"], "arguments": c["arguments"]}))
                         for c in calls)

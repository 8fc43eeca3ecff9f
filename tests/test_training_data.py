"""Training data: JSONL loading and validation (with line numbers), templates, split, prompt masking."""
import json

import pytest

from slmops.errors import ConfigError
from training.dataset import DataError, Template, collate, load_jsonl, split_train_val, tokenize
from training.tiny import DATA_DIR


def write(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def test_shipped_dataset_loads_and_heldout_is_unseen():
    train = load_jsonl(DATA_DIR / "support_train.jsonl")
    held = load_jsonl(DATA_DIR / "support_heldout.jsonl")
    assert len(train) >= 100 and len(held) >= 20
    assert not {e.messages[0]["content"] for e in train} & {e.messages[0]["content"] for e in held}
    for ex in held:  # a key echoed from the question must not count as knowing the answer
        assert ex.answer_key.lower() not in ex.messages[0]["content"].lower()
        assert ex.answer_key.lower() in ex.target.lower()


def test_pairs_and_chat_records(tmp_path):
    f = write(tmp_path / "d.jsonl", [
        {"input": "q1", "output": "a1", "answer_key": "a1"},
        "",
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q2"},
                      {"role": "assistant", "content": "a2"}]},
    ])
    a, b = load_jsonl(f)
    assert a.target == "a1" and a.answer_key == "a1" and a.source.endswith(":1")
    assert b.target == "a2" and len(b.prompt_messages) == 2 and b.source.endswith(":3")


@pytest.mark.parametrize("line, words", [
    ("{not json", "Expecting"),
    (json.dumps({"input": "q"}), "'output'"),
    (json.dumps({"input": "q", "output": "  "}), "'output'"),
    (json.dumps([1, 2]), "JSON object"),
    (json.dumps({"messages": []}), "non-empty list"),
    (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "messages[0]"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "last message"),
])
def test_bad_records_name_the_line(tmp_path, line, words):
    f = write(tmp_path / "d.jsonl", [{"input": "q", "output": "a"}, line])
    with pytest.raises(DataError) as e:
        load_jsonl(f)
    assert f"{f}:2" in str(e.value) and words in str(e.value)


def test_every_bad_line_is_listed(tmp_path):
    f = write(tmp_path / "d.jsonl", ["{bad", {"input": "q", "output": "a"}, "{bad"])
    with pytest.raises(DataError, match=r"2 bad record\(s\)") as e:
        load_jsonl(f)
    assert f"{f}:1" in str(e.value) and f"{f}:3" in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no dataset file"):
        load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no records"):
        load_jsonl(write(tmp_path / "e.jsonl", [""]))


def test_split_is_deterministic_and_sized():
    ex = load_jsonl(DATA_DIR / "support_train.jsonl")
    tr, va = split_train_val(ex, 0.15, seed=1)
    _, va2 = split_train_val(ex, 0.15, seed=1)
    assert [e.source for e in va] == [e.source for e in va2]
    assert len(va) == round(len(ex) * 0.15) and len(tr) + len(va) == len(ex)
    with pytest.raises(ConfigError, match="val_fraction"):
        split_train_val(ex, 0.7)


def test_text_template_renders_prompt_and_target():
    t = Template.parse("### Question: {input}\n### Answer: {output}")
    ex = load_jsonl(DATA_DIR / "support_train.jsonl")[0]
    assert t.prompt(ex) == f"### Question: {ex.messages[0]['content']}\n### Answer: "
    assert t.target(ex) == ex.target
    assert t.prompt_for("hi?") == "### Question: hi?\n### Answer: "


def test_template_naming_a_missing_field_fails_before_training(tmp_path):
    t = Template.parse("### Question: {instruction}\n### Answer: {response}")
    f = write(tmp_path / "d.jsonl", [{"input": "q", "output": "a"}])
    with pytest.raises(DataError, match=r"d.jsonl:1.*\['instruction', 'response'\]"):
        t.check(load_jsonl(f))


def test_malformed_templates_are_refused():
    with pytest.raises(ConfigError, match="two placeholders"):
        Template.parse("Answer: {output}")
    with pytest.raises(ConfigError, match="two placeholders"):
        Template.parse("no fields at all")


def test_chat_records_need_chatml(tmp_path):
    f = write(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                   {"role": "assistant", "content": "a"}]}])
    with pytest.raises(DataError, match="chatml"):
        Template.parse("Q: {input} A: {output}").check(load_jsonl(f))


def test_only_the_answer_is_learned(tiny_hf):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    ex = load_jsonl(DATA_DIR / "support_train.jsonl")[:2]
    rows = tokenize(ex, Template.parse("chatml"), tok, max_length=256)
    prompt_len = len(tok(Template.parse("chatml").prompt(ex[0]), add_special_tokens=False)["input_ids"])
    assert rows[0]["labels"][:prompt_len] == [-100] * prompt_len
    assert rows[0]["labels"][prompt_len:] == rows[0]["input_ids"][prompt_len:]
    assert tok.decode(rows[0]["input_ids"][prompt_len:]).endswith("<|im_end|>\n")
    batch = collate(rows, tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    with pytest.raises(DataError, match="longer than max_length"):
        tokenize(ex, Template.parse("chatml"), tok, max_length=4)

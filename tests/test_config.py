"""Config presets and overrides: every bad key or value is refused by name."""

from pathlib import Path

import pytest

from googlenet.config import ConfigError, apply_overrides, config_from_dict, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]


def test_presets_load() -> None:
    for preset in sorted((ROOT / "configs").glob("*.toml")):
        config = load_config(preset)
        assert config.train.epochs >= 1, preset


def test_overrides_are_typed() -> None:
    config = load_config(ROOT / "configs" / "fashion-mnist.toml", ["optim.lr=0.05", "schedule.name=cosine",
                                                                   "model.aux=false", "train.epochs=3"])  # fmt: skip
    assert (config.optim.lr, config.schedule.name, config.model.aux, config.train.epochs) == (0.05, "cosine", False, 3)
    assert parse_override('data.root="a b"') == ("data.root", "a b")


def test_round_trip_through_a_checkpoint_dict() -> None:
    config = load_config(None, ["optim.lr=0.2"])
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
        ("optimizer.lr=0.1", "unknown config section in 'optimizer.lr'"),
        ("optim.lr=abc", "optim.lr must be a number, got 'abc'"),
        ("optim.lr=0", "optim.lr must be > 0"),
        ("optim.lr=nan", "optim.lr must be a number"),
        ("data.batch_size=0", "data.batch_size must be >= 1"),
        ("data.batch_size=-4", "data.batch_size must be >= 1"),
        ("data.batch_size=2.5", "data.batch_size must be a whole number"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("model.aux=maybe", "model.aux must be true or false"),
        ("model.name=resnet", "model.name must be one of bn, paper, small, torchvision"),
        ("schedule.name=linear", "schedule.name must be one of"),
        ("train.compile_mode=cudagraphs", "train.compile_mode must be one of default, reduce-overhead, max-autotune"),
        ("lr", "must look like section.key=value"),
        ("optim.name=adam", "optim.name must be one of sgd, muon; got 'adam'"),
        ("optim.muon_lrr=0.02", "unknown config key 'optim.muon_lrr'; optim has backbone_lr_mult, grad_clip, label"),
        ("optim.muon_momentum=0", "optim.muon_momentum must be > 0 and <= 1"),
        ("optim.muon_ns_steps=0", "optim.muon_ns_steps must be >= 1 and <= 99"),
        ("data.flip=sometimes", "data.flip must be one of random, alternate"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[optim\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.learning_rate'"):
        load_config(unknown)
    flat = tmp_path / "flat.toml"
    flat.write_text("lr = 0.1\n")
    with pytest.raises(ConfigError, match="must be a \\[section\\] table"):
        load_config(flat)


def test_resume_overrides_are_limited() -> None:
    config = load_config(None)
    apply_overrides(config, ["train.epochs=9"], allowed=frozenset({"train.epochs"}))
    assert config.train.epochs == 9
    with pytest.raises(ConfigError, match=r"optim\.lr cannot be changed when resuming"):
        apply_overrides(config, ["optim.lr=1"], allowed=frozenset({"train.epochs"}))

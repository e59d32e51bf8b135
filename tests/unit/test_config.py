"""The config loader: YAML files, overrides, type checks and contradictions."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from llmrec.config import ConfigError, RunConfig, dump_yaml, load_config, load_params


def test_defaults_validate() -> None:
    config = load_config()
    assert isinstance(config, RunConfig)
    assert config.eval.ks == [1, 5, 10, 20]


def test_files_merge_then_overrides_apply(tmp_path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("train:\n  learning_rate: 0.001\n  epochs: 3\nlora:\n  r: 8\n")
    extra = tmp_path / "extra.yaml"
    extra.write_text("train:\n  epochs: 5\n")
    config = load_config([base, extra], ["lora.r=4", "train.learning_rate=1e-4", "lora.target_modules=[q_proj]"])
    assert config.train.epochs == 5  # later file wins
    assert config.train.learning_rate == pytest.approx(1e-4)  # override wins, "1e-4" read as a number
    assert config.lora.r == 4
    assert config.lora.target_modules == ["q_proj"]


def test_include_merges_the_named_files_under_the_own_keys(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text("train:\n  learning_rate: 0.001\n  epochs: 3\nlora:\n  r: 8\n")
    (tmp_path / "sub" / "more.yaml").write_text("include: base.yaml\ntrain:\n  epochs: 4\n  batch_size: 2\n")
    (tmp_path / "other.yaml").write_text("include: sub/base.yaml\nlora:\n  r: 2\n")
    top = tmp_path / "top.yaml"
    top.write_text("include: [sub/more.yaml, other.yaml]\ntrain:\n  batch_size: 6\n")
    config = load_config([top])
    # more.yaml's epochs survive other.yaml's second copy of base.yaml only if included files merge in order
    assert config.lora.r == 2 and config.train.batch_size == 6 and config.train.learning_rate == pytest.approx(0.001)
    assert config.train.epochs == 3  # other.yaml re-applies base.yaml after more.yaml: the later file wins
    assert load_config([tmp_path / "sub" / "more.yaml"]).train.epochs == 4


def test_a_plus_key_appends_to_the_included_list_and_a_plain_key_replaces_it(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text("eval:\n  ks: [1, 5]\nlora:\n  target_modules: [q_proj]\n")
    (tmp_path / "more.yaml").write_text("include: base.yaml\neval:\n  ks+: [10, 20]\nlora:\n  target_modules: [v_proj]\n")
    (tmp_path / "most.yaml").write_text("include: more.yaml\neval:\n  ks+: [50]\n")
    config = load_config([tmp_path / "most.yaml"])
    assert config.eval.ks == [1, 5, 10, 20, 50]  # appended at each level, in include order
    assert config.lora.target_modules == ["v_proj"]  # no "+": replaced, as before
    (tmp_path / "alone.yaml").write_text("eval:\n  ks+: [3]\n")  # nothing to append to: the list alone
    assert load_config([tmp_path / "alone.yaml"]).eval.ks == [3]
    assert load_config([tmp_path / "base.yaml", tmp_path / "alone.yaml"]).eval.ks == [1, 5, 3]  # files on the command line too
    for bad, match in (("eval:\n  ks+: 3\n", "appends a list to a list"),
                       ("eval:\n  ks: [1]\n  ks+: [3]\n", "cannot stand beside 'ks'"),
                       ("eval:\n  +: [3]\n", "needs a name")):
        (tmp_path / "bad.yaml").write_text("include: base.yaml\n" + bad)
        with pytest.raises(ConfigError, match=r"bad\.yaml: .*" + match):
            load_config([tmp_path / "bad.yaml"])


def test_a_params_file_read_alone_resolves_its_includes_and_append_keys(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text("config: [a.yaml]\nscoring: beam\n")
    (tmp_path / "more.yaml").write_text("include: base.yaml\nconfig+: [b.yaml]\nvalid_users: null\n")
    assert load_params(tmp_path / "more.yaml") == {"config": ["a.yaml", "b.yaml"], "scoring": "beam",
                                                    "valid_users": None}
    (tmp_path / "alone.yaml").write_text("config+: [c.yaml]\nnested:\n  ks+: [5]\n")
    assert load_params(tmp_path / "alone.yaml") == {"config": ["c.yaml"], "nested": {"ks": [5]}}  # no "config+" key left
    (tmp_path / "bad.yaml").write_text("config+: c.yaml\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: .*appends a list to a list"):
        load_params(tmp_path / "bad.yaml")


def test_include_errors_name_the_file(tmp_path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("include: b.yaml\n")
    b.write_text("include: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: include: cycle .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config([a])
    a.write_text("include: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: include: missing\.yaml .* does not exist"):
        load_config([a])
    a.write_text("include: {x: 1}\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: include: expected a path or a list"):
        load_config([a])


def test_unknown_key_names_the_file(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train.*unknown key.*'lr'"):
        load_config([path])


def test_wrong_type_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int"):
        load_config([], ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"lora\.enabled: expected bool"):
        load_config([], ["lora.enabled=3"])


def test_contradictions_are_rejected() -> None:
    with pytest.raises(ConfigError, match="num_beams must be >= generation.top_k"):
        load_config([], ["generation.num_beams=2", "generation.top_k=10"])
    with pytest.raises(ConfigError, match="QLoRA"):
        load_config([], ["model.load_in_4bit=true", "lora.enabled=false"])
    with pytest.raises(ConfigError, match="model.num_layers must be >= 1"):
        load_config([], ["model.num_layers=0"])


def test_invalid_yaml_and_missing_file(tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        load_config([path])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "nope.yaml"])
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config([], ["train.epochs"])


def test_dump_round_trips(tmp_path) -> None:
    config = load_config([], ["train.epochs=7", "data.min_rating=4"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(config))
    again = load_config([path])
    assert again == config



@dataclass
class _ExtraGroup:
    size: int = 1  # must be positive

    def validate(self) -> None:
        if self.size < 1:
            raise ValueError(f"extra.size must be >= 1, got {self.size}")


@dataclass
class _ExtendedConfig(RunConfig):
    extra: _ExtraGroup = field(default_factory=_ExtraGroup)


def test_extra_groups_validate_themselves() -> None:
    assert load_config([], ["extra.size=3"], schema=_ExtendedConfig).extra.size == 3
    with pytest.raises(ConfigError, match="extra.size must be >= 1"):
        load_config([], ["extra.size=0"], schema=_ExtendedConfig)

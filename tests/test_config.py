"""The run configuration: validated whole at load, one line per mistake naming the key path, one default
per knob, and a reference (docs/config.md, docs/config.schema.json) generated from the same models."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from m6rec import config_docs
from m6rec.config import (
    AudioSettings,
    ImageSettings,
    KGSettings,
    RankerParams,
    RunConfig,
    TextSettings,
    TwoTowerSettings,
    load_config,
)
from m6rec.errors import ConfigError

M6REC = Path(sys.executable).with_name("m6rec")


def _readme_example() -> str:
    text = Path("README.md").read_text()
    match = re.search(r"```yaml\n(split:.*?)```", text, re.DOTALL)
    assert match, "README has a YAML config example"
    return match.group(1)


def test_readme_example_parses_into_typed_sections(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(_readme_example())
    config = RunConfig.from_yaml(path)
    assert config.split == "random:0.25" and config.top_k == 20
    assert config.baselines.params["ease"] == {"l2": 500.0}
    assert config.embeddings.fusion.mode == "attention"
    assert config.embeddings.kg.model == "RotatE" and config.embeddings.kg.epochs == 200
    assert config.ranker.params.num_leaves == 15
    assert config.ranker.params.min_child_samples == RankerParams().min_child_samples, (
        "other knobs keep defaults"
    )
    assert config.ranker.monotone_features == {"*_rank": -1, "*_score_z": 1}


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        ({"splitt": "random:0.25"}, "splitt: unknown key; allowed keys: split, seed, top_k,"),
        (
            {"embeddings": {"kg": {"epochz": 3}}},
            "embeddings.kg.epochz: unknown key; allowed keys: model, dimension, epochs, batch_size, "
            "learning_rate, seed, attribute_columns",
        ),
        ({"baselines": {"modelz": ["ease"]}}, "baselines.modelz: unknown key; allowed keys: models,"),
        ({"k_values": ["ten"]}, "k_values.0: Input should be a valid integer (got 'ten')"),
        ({"k_values": []}, "k_values: List should have at least 1 item"),
        ({"top_k": 0}, "top_k: Input should be greater than or equal to 1 (got 0)"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0 (got -1)"),
        ({"top_k": "10"}, "top_k: Input should be a valid integer (got '10')"),
        ({"skip_invalid_rows": 1}, "skip_invalid_rows: Input should be a valid boolean (got 1)"),
        (
            {"embeddings": {"modalities": ["text", "smell"]}},
            "embeddings.modalities.1: Input should be 'text',",
        ),
        (
            {"embeddings": {"image": {"batch_size": 0}}},
            "embeddings.image.batch_size: Input should be greater",
        ),
        (
            {"embeddings": {"kg": {"model": "TransX"}}},
            "embeddings.kg.model: unknown KG model; allowed: TransE,",
        ),
        ({"embeddings": {"two_tower": {"loss": "hinge"}}}, "embeddings.two_tower.loss: Input should be"),
        ({"embeddings": {"fusion": {"mode": "sum"}}}, "embeddings.fusion.mode: Input should be 'concat' or"),
        ({"fold_split": "sideways"}, "fold_split: Input should be 'auto', 'random' or 'temporal'"),
        ({"split": "randm:0.2"}, "split: unknown split 'randm:0.2'; use one of: random:0.25,"),
        ({"split": "random:2"}, "split: test ratio must be between 0 and 1"),
        ({"split": "cutoff:1e400"}, "split: cutoff '1e400' is not a unix time"),
        (
            {"ranker": {"monotone_features": {"*_rank": 2}}},
            "ranker.monotone_features.*_rank: Input should be",
        ),
        (
            {"ranker": {"monotone_features": {"*_rank": True}}},
            "ranker.monotone_features.*_rank: Input should",
        ),
        (
            {"ranker": {"extra_sources": ["two_towr"]}},
            "ranker.extra_sources: unknown candidate source 'two_towr'",
        ),
        ({"ranker": {"cold_item_share": 1.0}}, "ranker.cold_item_share: Input should be less than 1"),
        (
            {"ranker": {"params": {"num_leaves": True}}},
            "ranker.params.num_leaves: Input should be a valid integer",
        ),
        (
            {"ranker": {"params": {"reg_lambdaa": 1}}},
            "ranker.params.reg_lambdaa: 'reg_lambdaa' is not allowed; expected a ranker hyperparameter or a "
            "LightGBM parameter name",
        ),
        (
            {"ranker": {"params": {"min_data_in_leaf": 5}}},
            "ranker.params.min_data_in_leaf: 'min_data_in_leaf' is not allowed; expected "
            "ranker.params.min_child_samples (LightGBM's min_data_in_leaf)",
        ),
        ({"ranker": {"params": {"metric": "auc"}}}, "ranker.params.metric: 'metric' is not allowed"),
        ({"ranker": {"params": {"lambda_l2": {"a": 1}}}}, "ranker.params.lambda_l2: {'a': 1} is not allowed"),
        (
            {"baselines": {"models": ["eas"]}},
            "baselines.models.0: 'eas' is not allowed; expected one of ease, ials, itemknn, popularity",
        ),
        (
            {"baselines": {"search_spaces": {"ease": {"l3": [1.0]}}}},
            "baselines.search_spaces.ease.l3: 'l3' is not allowed; expected a hyperparameter of ease: l2, max_items",
        ),
        (
            {"baselines": {"search_spaces": {"ease": {"l2": [100.0, "a"]}}}},
            "baselines.search_spaces.ease.l2.1: 'a' is not allowed; expected a value of type float",
        ),
        (
            {"baselines": {"search_spaces": {"ease": {"l2": []}}}},
            "baselines.search_spaces.ease.l2: [] is not",
        ),
        (
            {"baselines": {"params": {"itemknn": {"neighbours": 2.5}}}},
            "baselines.params.itemknn.neighbours: 2.5 is not allowed; expected a value of type int",
        ),
        ({"columns": {"items": {"title": "txt"}}}, "columns.items.title: Input should be 'text',"),
        (["just", "a list"], "expected a mapping of keys, got list"),
    ],
)
def test_a_bad_key_anywhere_gives_one_line_naming_its_path(raw, line):
    with pytest.raises(ConfigError) as raised:
        load_config(raw, "run.yaml")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"run.yaml: {line}"), message


def test_every_problem_is_counted_on_the_one_line():
    with pytest.raises(ConfigError, match=r"^run\.yaml: split: .* \(2 more problems\)$"):
        load_config({"top_k": 0, "seed": -1, "split": "x"}, "run.yaml")


def test_yaml_that_does_not_parse_is_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("top_k: [1,\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: cannot read config: ") as raised:
        RunConfig.from_yaml(path)
    assert "\n" not in str(raised.value)


def test_an_empty_file_is_the_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("# nothing set\n")
    assert RunConfig.from_yaml(path) == RunConfig()


def test_defaults_survive_a_round_trip_through_json():
    dumped = json.loads(RunConfig().model_dump_json())
    assert load_config(dumped, "dump") == RunConfig()


def test_lightgbm_parameters_by_lightgbm_name_reach_the_ranker():
    config = load_config({"ranker": {"params": {"reg_lambda": 1, "lambda_l1": 0.5}}}, "run.yaml")
    kwargs = config.ranker.params.ranker_kwargs()
    assert kwargs["lightgbm_params"] == {"reg_lambda": 1, "lambda_l1": 0.5}

    from ranker.model import LightGBMRanker

    ranker = LightGBMRanker(**kwargs)
    assert (
        ranker._lightgbm_params()["reg_lambda"] == 1
        and ranker.get_params()["lightgbm_params"]["lambda_l1"] == 0.5
    )
    with pytest.raises(ConfigError, match="num_threads"):
        LightGBMRanker(lightgbm_params={"num_threads": 4})


def test_a_named_search_space_replaces_only_its_own_grid():
    config = load_config({"baselines": {"search_spaces": {"ease": {"l2": [10.0]}}}}, "run.yaml")
    assert config.baselines.search_spaces["ease"] == {"l2": [10.0]}
    assert config.baselines.search_spaces["ials"] == RunConfig().baselines.search_spaces["ials"]


def test_assignment_is_validated_like_loading():
    config = RunConfig()
    with pytest.raises(ConfigError, match="^split: unknown split"):
        config.split = "randm:0.2"
    with pytest.raises(ConfigError, match="^models.0: .*expected one of"):
        config.baselines.models = ["eas"]
    assert config.baselines.models == RunConfig().baselines.models, "a refused value is not kept"
    assert config.replace(top_k=5).top_k == 5 and config.top_k == 10


def _signature_defaults(function) -> dict:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def test_each_knob_has_one_default():
    from features.audio import AudioEncoder
    from features.image import ImageEncoder
    from features.kg import KGConfig
    from features.text import TextEncoder
    from features.two_tower import TwoTowerConfig
    from ranker.model import LightGBMRanker

    for encoder, settings in (
        (TextEncoder, TextSettings),
        (ImageEncoder, ImageSettings),
        (AudioEncoder, AudioSettings),
    ):
        defaults = _signature_defaults(encoder.__init__)
        for name, value in settings().model_dump().items():
            assert defaults[name] == value, (
                f"{encoder.__name__}({name}=...) default differs from {settings.__name__}"
            )
    ranker_defaults = _signature_defaults(LightGBMRanker.__init__)
    for name, value in RankerParams().model_dump().items():
        expected = tuple(value) if isinstance(value, list) else value
        assert ranker_defaults[name] == expected, f"LightGBMRanker({name}=...)"
    assert KGConfig().model_dump(exclude={"force_cpu"}) == KGSettings().model_dump()
    assert TwoTowerConfig().model_dump(exclude={"force_cpu", "fusion"}) == TwoTowerSettings().model_dump()


def test_generated_reference_is_up_to_date():
    for name, content in config_docs.generated_files().items():
        committed = (config_docs.DOCS_DIR / name).read_text()
        assert committed == content, f"docs/{name} is stale: run python -m m6rec.config_docs"


def test_reference_lists_every_key():
    markdown = config_docs.render_markdown()
    for path, model in config_docs._sections(RunConfig, ()):
        for name in model.model_fields:
            assert f"| `{name}` |" in markdown, ".".join((*path, name))
    schema = json.loads(config_docs.render_schema())
    assert schema["additionalProperties"] is False and "ranker" in schema["properties"]


def _m6rec(*args) -> subprocess.CompletedProcess:
    if not M6REC.exists():
        pytest.skip(f"console script {M6REC} not installed")
    return subprocess.run([str(M6REC), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_a_bad_nested_key_stops_the_command_before_any_data_is_read(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("embeddings:\n  kg: {epochz: 3}\n")
    missing_data = tmp_path / "no-such-dataset"
    for command in (
        ("run", missing_data, "--out", tmp_path / "out"),
        ("embed", missing_data, "--out", tmp_path),
    ):
        result = _m6rec(*command, "--config", config)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.splitlines() == [
            f"error: {config}: embeddings.kg.epochz: unknown key; allowed keys: model, dimension, epochs, "
            "batch_size, learning_rate, seed, attribute_columns, warm_start_epochs"
        ]
    assert not (tmp_path / "out").exists()


def test_a_bad_split_option_is_one_line_and_exit_2(tmp_path):
    result = _m6rec("run", tmp_path / "no-such-dataset", "--out", tmp_path / "out", "--split", "randm:0.2")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: split: unknown split 'randm:0.2'; use one of: random:0.25, temporal:0.2, leave-last-out:1, "
        "cutoff:<unix time or ISO date> (got 'randm:0.2')"
    ]


def test_a_split_made_irrelevant_by_a_test_file_is_reported(tmp_path, caplog):
    from pipelines.run import run_pipeline

    data = tmp_path / "data"
    data.mkdir()
    users = [f"u{user}" for user in range(6) for _ in range(4)]
    items = [f"i{(user + offset) % 8}" for user in range(6) for offset in range(4)]
    (data / "interactions.csv").write_text(
        "user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in zip(users, items, strict=True))
    )
    (data / "test.csv").write_text("user_id,item_id\nu0,i5\nu1,i7\n")
    config = RunConfig(
        split="random:0.2",
        baselines={"models": ["popularity"]},
        embeddings={"modalities": []},
        ranker={"enabled": False},
    )
    with caplog.at_level("WARNING", logger="m6rec"):
        result = run_pipeline(data, tmp_path / "out", config)
    assert result.metrics is not None, "evaluated on the test file"
    assert any(
        "split random:0.2 ignored: the dataset has a test file" in record.getMessage()
        for record in caplog.records
    )

"""Run configuration from YAML: the README's example parses, and bad keys are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from m6rec.config import RunConfig
from m6rec.errors import ConfigError


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
    assert config.embeddings.fusion == {"mode": "attention"}
    assert config.ranker.candidates_per_source == 100
    assert config.fold_split == "auto"
    assert config.ranker.monotone_features == {"*_rank": -1, "*_score_z": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("splitt: random:0.25\n", "unknown key 'splitt'"),
        ("baselines:\n  modelz: [ease]\n", "baselines: unknown key 'modelz'"),
        ("top_k: ten\n", "top_k must be int"),
        ("embeddings:\n  modalities: [text, smell]\n", "unknown modality 'smell'"),
        ("- just\n- a list\n", "expected a mapping"),
        ("fold_split: sideways\n", "fold_split must be one of"),
        ("ranker:\n  monotone_features: {'*_rank': 2}\n", "monotone_features"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig.from_yaml(path)

import pytest

from relkd.config import ConfigError, load_params, merge, parse_params


def test_defaults_validate():
    p = parse_params({})
    assert p.data.source == "catalogue"
    assert p.data.split.valid == 0.15


def test_repo_params_file_is_valid():
    p = load_params("params.yaml")
    assert p.data.catalogue.n_queries >= 1
    assert set(p.data.catalogue.languages) >= {"en"}


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'data\.catalog'"):
        parse_params({"data": {"catalog": {"n_queries": 3}}})


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"data\.catalogue\.n_queries") as e:
        parse_params({"data": {"catalogue": {"n_queries": 0}}})
    assert "got 0" in str(e.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="leaves too little for train"):
        parse_params({"data": {"split": {"valid": 0.5, "test": 0.45}}})
    with pytest.raises(ConfigError, match="needs table.path"):
        parse_params({"data": {"source": "table"}})
    with pytest.raises(ConfigError, match="not both"):
        parse_params({"data": {"table": {"labels": {"1": "a"}, "thresholds": [[1.0, "a"]]}}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_merge_is_deep_and_does_not_mutate():
    base = {"data": {"seed": 1, "catalogue": {"n_queries": 5, "pairs_per_query": 2}}}
    out = merge(base, {"data": {"catalogue": {"n_queries": 9}}})
    assert out["data"]["catalogue"] == {"n_queries": 9, "pairs_per_query": 2}
    assert base["data"]["catalogue"]["n_queries"] == 5


def test_profiles_validate():
    import yaml

    base = yaml.safe_load(open("params.yaml"))
    for name in ("tiny", "paper"):
        parse_params(merge(base, yaml.safe_load(open(f"profiles/{name}.yaml"))))

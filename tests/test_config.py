import pytest
from pathlib import Path

from relkd.config import ConfigError, load_params, merge, parse_params


def test_defaults_validate():
    p = parse_params({})
    assert p.data.source == "catalogue"
    assert p.data.split.valid == 0.15


def test_repo_params_file_is_valid():
    p = load_params("params.yaml")
    assert p.data.catalogue.n_queries >= 1
    assert set(p.data.catalogue.languages) >= {"en"}


def _differences(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [f"{path}: typed default {a!r}, params.yaml {b!r}"]


def test_typed_defaults_are_params_yaml():
    """One home per default: params.yaml is the embedded default written out, so the typed configs (what a
    library caller gets from parse_params({}) or StudentConfig()) build the same pipeline; a value changed in
    one place and not the other fails here."""
    assert _differences(parse_params({}).model_dump(), load_params("params.yaml").model_dump()) == []


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
    names = sorted(p.stem for p in Path("profiles").glob("*.yaml"))
    assert {"tiny", "paper", "real-cpu"} <= set(names)
    for name in names:
        parse_params(merge(base, yaml.safe_load(open(f"profiles/{name}.yaml"))))


def test_ops_commands_take_their_defaults_from_params(tmp_path):
    """`relkd score` and `relkd promote` options default to the params file's values, not to numbers of their
    own; a bad params file is named."""
    import yaml
    from click.testing import CliRunner

    from relkd.cli import _params_or_defaults, main

    assert _params_or_defaults(str(tmp_path / "missing.yaml")) == parse_params({})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"score": {"shard_size": 7, "batch_size": 5}, "registry": {"name": "m"}}))
    p = _params_or_defaults(str(path))
    assert (p.score.shard_size, p.score.batch_size, p.registry.name) == (7, 5, "m")
    path.write_text(yaml.safe_dump({"score": {"shard_size": 0}}))
    res = CliRunner().invoke(main, ["promote", "--params", str(path), "--dry-run"])
    assert res.exit_code == 1 and "score.shard_size" in res.output
    for cmd, opt in (("score", "default: score.shard_size"), ("promote", "default: registry.name")):
        out = " ".join(CliRunner().invoke(main, [cmd, "--help"]).output.split())
        assert opt in out


def test_profiles_define_named_variants_as_the_code_does():
    """A profile that names a student variant (profiles/ablations.yaml, profiles/paper.yaml) defines it as
    relkd.student.config.named_variants() does: one definition, wherever it is switched on."""
    import yaml

    from relkd.student.config import VariantConfig, named_variants

    named = named_variants()
    seen = 0
    for path in sorted(Path("profiles").glob("*.yaml")):
        variants = ((yaml.safe_load(path.read_text()) or {}).get("student") or {}).get("variants") or {}
        for name, spec in variants.items():
            assert name in named, f"{path}: variant {name!r} is not one of named_variants()"
            assert VariantConfig(**spec) == named[name], f"{path}: {name!r} differs from named_variants()"
            seen += 1
    assert seen >= 3


def test_params_yaml_is_rendered_from_the_typed_defaults():
    """One home per default and description: params.yaml is exactly the typed defaults rendered with each Field's
    description (`relkd params write --defaults`); a default or description changed in one place only fails here."""
    from relkd.params_text import params_yaml

    assert Path("params.yaml").read_text(encoding="utf-8") == params_yaml(parse_params({})), (
        "params.yaml is not the rendered defaults: run `relkd params write --defaults`")


def test_configuration_doc_is_current():
    from relkd.config import Params
    from relkd.params_text import configuration_md

    assert Path("docs/configuration.md").read_text(encoding="utf-8") == configuration_md(Params), (
        "docs/configuration.md is stale: run `relkd params doc`")


def test_every_key_is_described():
    from relkd.config import Params
    from relkd.section import Section

    def walk(cls, path):
        for name, field in cls.model_fields.items():
            sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, Section) \
                else None
            if sub is not None:
                assert sub.__doc__, f"section {path}{name} has no docstring"
                yield from walk(sub, f"{path}{name}.")
            elif not field.description:
                yield f"{path}{name}"

    assert list(walk(Params, "")) == []


def test_a_profile_keeps_every_comment(tmp_path):
    """`relkd profile` rewrites params.yaml rendered again: the overlay's values, and every description comment."""
    import shutil

    from click.testing import CliRunner

    from relkd.cli import main

    shutil.copy("params.yaml", tmp_path / "params.yaml")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "small.yaml").write_text("student: {epochs: 1}\n")
    before = [line for line in (tmp_path / "params.yaml").read_text().splitlines() if line.lstrip().startswith("#")]
    out = CliRunner().invoke(main, ["profile", "small", "--params", str(tmp_path / "params.yaml"),
                                    "--profiles", str(tmp_path / "profiles")])
    assert out.exit_code == 0, out.output
    text = (tmp_path / "params.yaml").read_text()
    assert load_params(tmp_path / "params.yaml").student.epochs == 1
    assert [line for line in text.splitlines() if line.lstrip().startswith("#")] == before

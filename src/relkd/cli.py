"""The `relkd` command: stage commands (what dvc.yaml runs) and ops commands. It parses and calls."""
from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import click

from relkd.config import ConfigError, load_params


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="relkd")
def main() -> None:
    """relkd: multi-perspective CoT teacher distilled into a latent-reasoning student.

    Stage commands run one pipeline stage by hand (dvc repro runs them in order);
    ops commands check params, prepare models and, as they land, serve, score and promote."""


def _stage_names() -> list[str]:
    import pipeline

    return sorted(m.name for m in pkgutil.iter_modules(pipeline.__path__) if m.name != "common")


class StageGroup(click.Group):
    """One subcommand per module in pipeline/, so a new stage module is a new command."""

    def list_commands(self, ctx):
        return _stage_names()

    def get_command(self, ctx, name):
        if name not in _stage_names():
            return None
        import pipeline

        # Read the docstring without importing: listing stages must not load torch.
        source = (Path(pipeline.__path__[0]) / f"{name}.py").read_text(encoding="utf-8")
        doc = (ast.get_docstring(ast.parse(source)) or "").strip()

        @click.command(name=name, context_settings={"ignore_unknown_options": True, "help_option_names": []},
                       help=doc + f"\n\nArguments go to the stage (`relkd stage {name} --help` lists them); "
                       "dvc.yaml holds the paths DVC passes.", add_help_option=False)
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def cmd(args):
            importlib.import_module(f"pipeline.{name}").main(list(args))

        return cmd


@main.group(cls=StageGroup)
def stage() -> None:
    """Run one pipeline stage (the same entry point dvc.yaml calls)."""


@main.command("check-params")
@click.option("--params", default="params.yaml", show_default=True, help="params file to validate")
def check_params(params: str) -> None:
    """Validate params.yaml: unknown keys and bad values are named."""
    try:
        p = load_params(params)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{params}: ok ({', '.join(p.model_fields_set) or 'all defaults'})")


@main.command("profile")
@click.argument("name")
@click.option("--params", default="params.yaml", show_default=True, help="params file to rewrite")
@click.option("--profiles", default="profiles", show_default=True, help="folder of profile overlays")
def profile(name: str, params: str, profiles: str) -> None:
    """Merge profiles/NAME.yaml (tiny, paper) over params.yaml and validate the result.

    Undo with `git checkout params.yaml`; one key at a time, use `dvc exp run -S key=value`."""
    import yaml

    from relkd.config import merge, parse_params
    from relkd.io import write_text

    overlay_path = Path(profiles) / f"{name}.yaml"
    if not overlay_path.exists():
        known = sorted(p.stem for p in Path(profiles).glob("*.yaml"))
        raise click.ClickException(f"no profile '{name}' in {profiles}/; known: {known}")
    base = yaml.safe_load(Path(params).read_text(encoding="utf-8")) or {}
    merged = merge(base, yaml.safe_load(overlay_path.read_text(encoding="utf-8")) or {})
    try:
        parse_params(merged)
    except ConfigError as err:
        raise click.ClickException(f"profile {name}: {err}") from None
    write_text(params, yaml.safe_dump(merged, sort_keys=False, allow_unicode=True))
    click.echo(f"{params}: profile '{name}' applied")


@main.command("models")
@click.argument("names", nargs=-1)
def models(names: tuple[str, ...]) -> None:
    """Resolve model names to local folders (converting the teacher's GGUF once), e.g.
    `relkd models pypi:SmolLM2-135M-Instruct pypi:all-MiniLM-L6-v2`."""
    from relkd.models import resolve

    for name in names or ("pypi:all-MiniLM-L6-v2", "pypi:SmolLM2-135M-Instruct"):
        try:
            click.echo(f"{name}\t{resolve(name)}")
        except (ValueError, ModuleNotFoundError, FileNotFoundError) as err:
            raise click.ClickException(str(err)) from None


if __name__ == "__main__":
    sys.exit(main())

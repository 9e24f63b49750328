"""The `relkd` command: stage commands (what dvc.yaml runs) and ops commands. It parses and calls."""
from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import click

from relkd.config import ConfigError, load_params


def _pipeline_dir() -> Path:
    """The folder of the stage modules, found without importing them (the library never imports its glue)."""
    spec = importlib.util.find_spec("pipeline")
    if spec is None or not spec.submodule_search_locations:
        raise click.ClickException("the pipeline package (DVC stage modules) is not installed beside relkd; run "
                                   "from the repository root or `pip install -e .`")
    return Path(list(spec.submodule_search_locations)[0])


def _stage_names() -> list[str]:
    # common.py and _*.py are helpers of the stages, not stages.
    return sorted(p.stem for p in _pipeline_dir().glob("*.py") if p.stem != "common" and not p.stem.startswith("_"))


def _stage_summary(module: str) -> str:
    """The first paragraph of a stage module's docstring, read without importing it."""
    source = (_pipeline_dir() / f"{module}.py").read_text(encoding="utf-8")
    return " ".join((ast.get_docstring(ast.parse(source)) or "").strip().split("\n\n")[0].split())


def run_stage(module: str, args) -> int:
    """``python -m pipeline.<module> ARGS`` (what dvc.yaml runs) as a process of its own; its exit status."""
    import subprocess
    import sys

    return subprocess.call([sys.executable, "-m", f"pipeline.{module}", *args])


def _stage_command(name: str, module: str) -> click.Command:
    """A command that hands all its arguments (--help included) to the stage module's own click command."""

    @click.pass_context
    def call(ctx):
        ctx.exit(run_stage(module, ctx.args))

    return click.Command(name, callback=call, help=_stage_summary(module), add_help_option=False,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


class StageCommands(click.Group):
    """A group some of whose commands are pipeline stage modules, each run as a process of its own with its real
    options (`relkd stage NAME --help` prints them). Listing them reads their docstrings."""

    def stage_modules(self) -> dict[str, str]:
        """command name -> pipeline module"""
        return {}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.stage_modules()))

    def get_command(self, ctx, name):
        module = self.stage_modules().get(name)
        if module is None:
            return super().get_command(ctx, name)
        return _stage_command(name, module)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in self.stage_modules():
                rows.append((name, _stage_summary(self.stage_modules()[name])))
            elif not (cmd := super().get_command(ctx, name)).hidden:
                rows.append((name, cmd.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class Main(StageCommands):
    def stage_modules(self):
        return {"probe": "probe", "teacher-score": "teacher_score"}  # analyses run by hand, not only by dvc


class Stages(StageCommands):
    def stage_modules(self):
        return {name: name for name in _stage_names()}


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="relkd")
def main() -> None:
    """relkd: multi-perspective CoT teacher distilled into a latent-reasoning student.

    Stage commands run one pipeline stage by hand (dvc repro runs them in order);
    ops commands check params, prepare models and, as they land, serve, score and promote."""


@main.group(cls=Stages)
def stage() -> None:
    """Run one pipeline stage (the same command dvc.yaml calls; `relkd stage NAME --help` lists its options)."""


def _params_or_defaults(path: str):
    """The params file's values (validated), or the built-in defaults (= the embedded params.yaml) when there is
    no such file: where an ops command's options take their defaults, so no value is written twice."""
    from relkd.config import parse_params

    try:
        return load_params(path) if Path(path).exists() else parse_params({})
    except ConfigError as err:
        raise click.ClickException(str(err)) from None


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
    """Merge profiles/NAME.yaml (tiny, real-cpu, paper, paper-tables, ablations) over params.yaml, validate the
    result and write it back with every key's description (the file is rendered from the typed configs, so no
    comment is lost). Profiles stack: each merges over the params.yaml it finds (`relkd profile ablations` after
    another adds the ablation students to it).

    Undo with `git checkout params.yaml` (or `relkd params write --defaults`); one key at a time, use
    `dvc exp run -S key=value`."""
    import yaml

    from relkd.config import merge, parse_params
    from relkd.io import write_text
    from relkd.params_text import params_yaml

    overlay_path = Path(profiles) / f"{name}.yaml"
    if not overlay_path.exists():
        known = sorted(p.stem for p in Path(profiles).glob("*.yaml"))
        raise click.ClickException(f"no profile '{name}' in {profiles}/; known: {known}")
    base = yaml.safe_load(Path(params).read_text(encoding="utf-8")) or {}
    merged = merge(base, yaml.safe_load(overlay_path.read_text(encoding="utf-8")) or {})
    try:
        checked = parse_params(merged)
    except ConfigError as err:
        raise click.ClickException(f"profile {name}: {err}") from None
    write_text(params, params_yaml(checked))
    click.echo(f"{params}: profile '{name}' applied")


@main.group("params")
def params_group() -> None:
    """params.yaml and docs/configuration.md, rendered from the typed configs (each key's one home)."""


@params_group.command("write")
@click.option("--params", default="params.yaml", show_default=True, help="params file to (re)write")
@click.option("--defaults", is_flag=True, help="write the typed defaults (the embedded default), not its values")
def params_write(params: str, defaults: bool) -> None:
    """Re-render params.yaml: its values (or the defaults) with every key's description as a comment."""
    from relkd.config import parse_params
    from relkd.io import write_text
    from relkd.params_text import params_yaml

    try:
        values = parse_params({}) if defaults or not Path(params).exists() else load_params(params)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    write_text(params, params_yaml(values))
    click.echo(f"{params}: written ({'defaults' if defaults else 'its values'})")


@params_group.command("doc")
@click.option("--out", default="docs/configuration.md", show_default=True, help="where the page goes")
def params_doc(out: str) -> None:
    """Write the configuration reference (every key: type, default, description)."""
    from relkd.config import Params
    from relkd.io import write_text
    from relkd.params_text import configuration_md

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_text(out, configuration_md(Params))
    click.echo(f"{out}: written")


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


# ------------------------------------------------------------------------------------------- ops
@main.command()
@click.option("--repo", default="triton_repo", show_default=True, help="Triton model repository")
@click.option("--http-port", type=int, default=None, help="default: a free port")
@click.option("--grpc-port", type=int, default=None, help="default: a free port")
@click.option("--metrics-port", type=int, default=None, help="default: a free port")
@click.option("--check", "check_url", default=None, metavar="HOST:PORT",
              help="report health and loaded versions of a running server (its HTTP port) and exit")
@click.option("--exposures", default=None, type=click.Path(file_okay=False),
              help="folder the A/B router logs exposures to; default: the router's own (online.exposures at export)")
def serve(repo, http_port, grpc_port, metrics_port, check_url, exposures) -> None:
    """Run the real tritonserver on 127.0.0.1 until Ctrl-C (stopped cleanly, nothing left behind)."""
    from relkd.serving.server import ServerUnreachable, check, triton

    if check_url:
        try:
            info = check(check_url)
        except ServerUnreachable as err:
            raise click.ClickException(str(err)) from None
        click.echo(f"{info['url']}: live={info['live']} ready={info['ready']}")
        for m in info["models"]:
            click.echo(f"  {m['name']} v{m['version']}: {m['state']} {m['reason']}".rstrip())
        return
    import signal
    import time

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # a service manager's stop: the same clean shutdown as Ctrl-C
    with triton(repo, http_port, grpc_port, metrics_port, exposures=exposures) as server:
        try:  # from the ready line on, a stop signal is a clean stop (the test sends one right after it)
            click.echo(f"tritonserver ready: HTTP {server.http_url}  gRPC {server.grpc_url}  (pid {server.pid}); "
                       f"metrics {server.metrics_url}; Ctrl-C stops it")
            while (died := server.exited()) is None:
                time.sleep(1)
        except KeyboardInterrupt:
            click.echo("stopping")
            return
    raise click.ClickException(f"{died}\nrestart it with `relkd serve`")  # the group is stopped by now


@main.command()
@click.argument("batch", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="folder for scores.parquet, rejects.jsonl, shards")
@click.option("--url", default=None, metavar="HOST:PORT", help="a running server (gRPC or HTTP port per --protocol); "
              "default: start one on --repo for this run")
@click.option("--repo", default="triton_repo", show_default=True, help="model repository when starting a server")
@click.option("--params", default="params.yaml", show_default=True,
              help="where the options below take their defaults (`score`, `triton.model_name`); a missing file "
              "means the built-in defaults")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default=None, help="default: score.protocol")
@click.option("--model-name", default=None, help="default: triton.model_name")
@click.option("--version", default="", help="model version (registry version); default: the server's newest")
@click.option("--batch-size", type=int, default=None, help="default: score.batch_size")
@click.option("--concurrency", type=int, default=None, help="default: score.concurrency")
@click.option("--shard-size", type=int, default=None, help="rows per resumable shard; default: score.shard_size")
def score(batch, out, url, repo, params, protocol, model_name, version, batch_size, concurrency, shard_size) -> None:
    """Score a batch file (parquet/CSV/JSONL, CSV and JSONL optionally gzipped: query, title, optional id)
    through Triton; resumable. SIGTERM or Ctrl-C stops it cleanly: it says how many rows are kept, stops the
    server it started (and waits until no process of it is left), and exits 143 (130); a second signal
    exits at once, leaving the server to its watchdog. docs/reliability.md says what a nightly job can
    count on."""
    import signal
    from contextlib import nullcontext

    from pydantic import ValidationError

    from relkd.section import format_errors
    from relkd.serving.client import DiskFull, ScoringRejected, ScoringStopped, score_file
    from relkd.serving.inputs import check_input
    from relkd.serving.server import ServerUnreachable, triton

    p = _params_or_defaults(params)
    given = {"protocol": protocol, "batch_size": batch_size, "concurrency": concurrency, "shard_size": shard_size}
    given = {k: v for k, v in given.items() if v is not None}
    try:
        cfg = type(p.score).model_validate({**p.score.model_dump(), **given})
    except ValidationError as err:
        raise click.ClickException(format_errors(err, "bad option value:")) from None
    received = []

    def stop(signum, frame):
        received.append(signum)
        signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once
        raise KeyboardInterrupt

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if not url:
            check_input(batch)  # a file that cannot be scored fails before a server is started for it
        with (nullcontext() if url else triton(repo)) as server:
            target = url or f"127.0.0.1:{server.grpc_port if cfg.protocol == 'grpc' else server.http_port}"
            try:
                s = score_file(batch, out, target, cfg, model_name or p.triton.model_name, version)
            except ServerUnreachable as err:
                died = server.exited() if server is not None else None  # our own server: say why it is gone
                raise ServerUnreachable(f"{err}\n{died}" if died else str(err)) from None
    except KeyboardInterrupt as err:  # the server this command started is stopped by now, its group gone
        name = signal.Signals(received[0] if received else signal.SIGINT).name
        what = str(err) if isinstance(err, ScoringStopped) else \
            "scoring had not begun; run the same command again (shards that earlier runs finished are kept)"
        click.echo(f"relkd score stopped by {name}: {what}" + ("" if url else "; its server is stopped"), err=True)
        sys.exit(128 + (received[0] if received else signal.SIGINT))
    except (ServerUnreachable, ScoringRejected, DiskFull, FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    click.echo(f"{s['rows']} rows: {s['scored']} scored -> {s['scores']}, {s['rejected']} rejected -> {s['rejects']}"
               + (f" ({s['duplicate_ids']} repeating an earlier row's id)" if s["duplicate_ids"] else ""))


@main.group(invoke_without_command=True)
@click.option("--params", default="params.yaml", show_default=True)
@click.option("--batch", default="data/nightly/batch.parquet", show_default=True)
@click.option("--scores", default="data/scores", show_default=True, help="folder with champion/ and challenger/")
@click.option("--prepared", default="data/prepared", show_default=True)
@click.option("--out", default="reports/ab", show_default=True)
@click.option("--metrics", default="metrics/ab.json", show_default=True)
@click.option("--teacher-scores", default=None, help="a `relkd teacher-score` output folder as a third arm")
@click.pass_context
def ab(ctx, params, batch, scores, prepared, out, metrics, teacher_scores) -> None:
    """Champion vs challenger on the same scored batch (what the `ab` stage runs), optionally with the
    LLM-tiered teacher as a third arm; `relkd ab online` analyses the live A/B."""
    if ctx.invoked_subcommand is not None:
        return
    args = ["--params", params, "--batch", batch, "--scores", scores, "--prepared", prepared, "--out", out,
            "--metrics", metrics, *(["--teacher-scores", teacher_scores] if teacher_scores else [])]
    ctx.exit(run_stage("ab", args))


@ab.command("online")
@click.option("--exposures", required=True, type=click.Path(exists=True, file_okay=False),
              help="the router's exposure folder")
@click.option("--outcomes", default=None, type=click.Path(exists=True, dir_okay=False),
              help="parquet/CSV/JSONL: request_id (optionally with row) or unit_id, and an outcome column")
@click.option("--outcome-column", default="outcome", show_default=True, help="e.g. click, add_to_cart, judgement")
@click.option("--stats", default=None, type=click.Path(exists=True, dir_okay=False),
              help="a server statistics snapshot (`relkd ab stats`, or server_stats.json of a replay) for the "
              "guardrails; without it they are not measured and nothing is promoted")
@click.option("--params", default="params.yaml", show_default=True,
              help="experiment (ab.salt), shares and the verdict's rules (online.*)")
@click.option("--out", default="reports/ab", show_default=True, help="folder for online.md and online.json")
def ab_online(exposures, outcomes, outcome_column, stats, params, out) -> None:
    """The live A/B: sample-ratio check first, then outcome rates per arm, guardrails, verdict (promote / keep /
    stop); `relkd promote --evidence OUT/online.json` acts on it."""
    from relkd.serving.online_report import analyse

    p = _params_or_defaults(params)
    try:
        r, _ = analyse(p, exposures, outcomes, stats, out, outcome_column=outcome_column)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"verdict: {r['verdict']}")
    for reason in r["reasons"]:
        click.echo(f"  {reason}")
    click.echo(f"report: {out}/online.md")


@ab.command("stats")
@click.option("--url", required=True, metavar="HOST:PORT", help="the server's HTTP endpoint")
@click.option("--metrics-url", default=None, metavar="URL", help="its metrics, http://HOST:PORT/metrics (for p99)")
@click.option("--model-name", default=None, help="the routed student; default: triton.model_name")
@click.option("--params", default="params.yaml", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSON file to write")
def ab_stats(url, metrics_url, model_name, params, out) -> None:
    """Snapshot a running server's per-version statistics (errors, p99) and router metrics for `ab online`."""
    from relkd.io import write_json
    from relkd.serving.server import ServerUnreachable
    from relkd.serving.server_stats import snapshot

    try:
        snap = snapshot(url, metrics_url, model_name or _params_or_defaults(params).triton.model_name)
    except ServerUnreachable as err:
        raise click.ClickException(str(err)) from None
    write_json(out, snap)
    click.echo(f"{out}: versions {sorted(snap['versions'])}")


@main.command()
@click.argument("batch", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="folder for the journal (resume point), responses.parquet and rejects.jsonl")
@click.option("--url", default=None, metavar="HOST:PORT", help="a running server (gRPC or HTTP port per --protocol); "
              "default: start one on --repo for this run")
@click.option("--repo", default="triton_repo", show_default=True, help="model repository when starting a server")
@click.option("--exposures", default=None, type=click.Path(file_okay=False),
              help="when starting a server: its router's exposure folder (default: the router's own)")
@click.option("--rate", type=float, default=None, help="requests per second over all clients (0: as fast as "
              "served); default: online.rate")
@click.option("--concurrency", type=int, default=None, help="concurrent clients; default: online.concurrency")
@click.option("--unit-column", default="unit_id", show_default=True,
              help="the column of user or session ids; rows without one are their own unit (the request id)")
@click.option("--params", default="params.yaml", show_default=True,
              help="where the defaults come from (online.*, score.protocol, ...); a missing file: built-in defaults")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default=None, help="default: score.protocol")
def replay(batch, out, url, repo, exposures, rate, concurrency, unit_column, params, protocol) -> None:
    """Send a batch file (query, title[, unit_id, request_id]) as live requests, one per row, through the A/B
    router; resumable (run it again after a stop and it sends only what is missing)."""
    from contextlib import nullcontext

    from relkd.io import write_json
    from relkd.serving.client import ScoringRejected
    from relkd.serving.inputs import check_input
    from relkd.serving.replay import replay_file
    from relkd.serving.server import ServerUnreachable, triton
    from relkd.serving.server_stats import snapshot

    p = _params_or_defaults(params)
    o, s = p.online, p.score
    protocol = protocol or s.protocol
    try:
        if not url:
            check_input(batch)  # a file that cannot be sent fails before a server is started for it
        with (nullcontext() if url else triton(repo, exposures=exposures)) as server:
            target = url or (server.grpc_url if protocol == "grpc" else server.http_url)
            try:
                online = o.model_copy(update={"rate": o.rate if rate is None else rate,
                                              "concurrency": concurrency or o.concurrency})
                r = replay_file(batch, out, target, online, s.model_copy(update={"protocol": protocol}), unit_column)
            except ServerUnreachable as err:
                died = server.exited() if server is not None else None
                raise ServerUnreachable(f"{err}\n{died}" if died else str(err)) from None
            if server is not None:  # our own server: keep its statistics for `relkd ab online --stats`
                write_json(Path(out) / "server_stats.json", snapshot(server.http_url, server.metrics_url,
                                                                     p.triton.model_name))
    except (ServerUnreachable, ScoringRejected, FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    rps = f", {r['requests_per_s']:.1f} requests/s" if r["requests_per_s"] else ""
    click.echo(f"{r['rows']} rows: {r['answered']} answered -> {r['responses']}, {r['refused']} refused and "
               f"{r['rejected']} not sendable -> {r['rejects']} ({r['resumed']} answered before this run{rps})")


@main.command()
@click.option("--name", default=None, help="registered model; default: registry.name of --params")
@click.option("--params", default="params.yaml", show_default=True)
@click.option("--version", default=None, help="version to promote (default: the `challenger` alias)")
@click.option("--policy", default="registry/policy.yaml", show_default=True)
@click.option("--aliases", "aliases_path", default="registry/aliases.json", show_default=True,
              help="the served aliases file the export stage depends on, rewritten after a promotion")
@click.option("--rows", "rows_path", default="data/prepared/test.parquet", show_default=True,
              help="labelled rows (query, title, label; parquet/CSV/JSONL) both versions are scored on, so the gate "
              "compares figures of the same rows; '' or a missing file: compare the versions' registered metrics")
@click.option("--evidence", "evidence_path", default=None, type=click.Path(dir_okay=False),
              help="an online A/B report (online.json of `relkd ab online` or the ab_online stage): its verdict "
              "must be promote, for these versions")
@click.option("--dry-run", is_flag=True, help="show the decision, change nothing")
def promote(name, params, version, policy, aliases_path, rows_path, evidence_path, dry_run) -> None:
    """Move `champion` to the challenger only if the promotion policy passes; refuse (exit 1) otherwise."""
    from relkd.io import write_json
    from relkd.tracking import configure
    from relkd.tracking.registry import PromotionPolicy, RegistryError, served
    from relkd.tracking.registry import promote as gate

    p = _params_or_defaults(params)
    name = name or p.registry.name
    rows = None
    if rows_path and Path(rows_path).exists():
        from relkd.serving.inputs import read_table

        rows = read_table(rows_path)
    elif rows_path:
        click.echo(f"note: no {rows_path}; comparing the versions' registered metrics (run `dvc repro prepare` "
                   "for the current rows)")
    configure(".")
    try:
        evidence = json.loads(Path(evidence_path).read_text(encoding="utf-8")) if evidence_path else None
        d = gate(name, PromotionPolicy.load(policy), version=version, dry_run=dry_run, rows=rows,
                 n_boot=p.ab.n_boot, seed=p.ab.seed, evidence=evidence)
    except (RegistryError, FileNotFoundError, ConfigError, json.JSONDecodeError) as err:
        raise click.ClickException(str(err)) from None
    verdict = "would promote" if dry_run and d.promote else "would refuse" if dry_run else \
        "promoted" if d.promote else "refused"
    click.echo(f"{name} v{d.version} vs champion v{d.champion or '-'}: {verdict}")
    for r in d.reasons:
        click.echo(f"  {r}")
    if d.promote and not dry_run:
        write_json(aliases_path, served(name))
        click.echo(f"{aliases_path} updated: `dvc repro` now serves version {d.version} as champion")
    if not d.promote:
        sys.exit(1)


@main.group()
def runs() -> None:
    """MLflow runs of the pipeline."""


@runs.command("compare")
@click.option("--experiment", default=None, help="experiment name (default: all)")
@click.option("--stage", default="student", show_default=True, help="tag relkd.stage ('' for any)")
@click.option("--variant", default=None, help="tag relkd.variant")
@click.option("--max-results", default=200, show_default=True)
@click.option("--metric", "metric_globs", multiple=True,
              help="metric name or glob to show, repeatable (default: *accuracy, *macro_f1); e.g. "
              "`--stage '' --metric wall_s --metric peak_rss_mb --no-params` lists every stage run's seconds "
              "and peak memory")
@click.option("--params/--no-params", "show_params", default=True, show_default=True,
              help="show the params that differ between the runs")
def runs_compare(experiment, stage, variant, max_results, metric_globs, show_params) -> None:
    """Students (or any stage's runs) side by side: the params that differ, and their metrics."""
    from relkd.tracking import configure
    from relkd.tracking.compare import DEFAULT_METRICS, format_table, runs_table

    configure(".")
    rows, params, metrics = runs_table(experiment, stage or None, variant, max_results,
                                       metric_globs or DEFAULT_METRICS)
    if not rows:
        raise click.ClickException("no runs match; run `dvc repro` first or loosen the filters")
    click.echo(format_table(rows, ["run", "variant", "seed", "stage", *(params if show_params else ()), *metrics]))


if __name__ == "__main__":
    sys.exit(main())

"""The ``m6rec`` command line. Heavy libraries are imported inside commands so ``--help`` is instant."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from m6rec import __version__
from m6rec.errors import M6RecError
from m6rec.log import configure_logging
from m6rec.modalities import MODALITIES

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    help="m6rec: offline multimodal two-stage recommendations.\n\nExample: m6rec demo --out demo-out",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings=CONTEXT_SETTINGS,
)
datasets_app = typer.Typer(
    help="Prepare public datasets, or generate a synthetic one, as m6rec dataset directories.",
    short_help="Prepare a public dataset or generate a synthetic one.",
)
app.add_typer(datasets_app, name="datasets")
flows_app = typer.Typer(
    help="Run, serve and deploy the Prefect flows: nightly-embeddings, train-ranker, batch-recommend, nightly.",
    short_help="Run, serve or deploy the Prefect flows.",
)
app.add_typer(flows_app, name="flows")

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of text.")]
DaskOption = Annotated[
    str | None,
    typer.Option(
        "--dask",
        metavar="ADDRESS",
        help="Run the partitioned stages on Dask: tcp://HOST:PORT of a scheduler, or local:N worker "
        "processes (default: the config's dask.address, else $M6REC_DASK_ADDRESS, else in-process).",
    ),
]


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"m6rec {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log at DEBUG: per-epoch lines, every library's notes.")
    ] = False,
) -> None:
    """m6rec: offline multimodal two-stage recommendations."""
    if verbose:
        configure_logging(verbose=True)


@app.command(short_help="The main job: embeddings, ranker, every user's list.")
def run(
    data_dir: Annotated[
        Path,
        typer.Argument(metavar="DATA_DIR", help="Dataset directory (interactions, items, users, kg, test)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    config: Annotated[Path | None, typer.Option(help="YAML run configuration.")] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Hold out a test set: random:0.25, temporal:0.2, "
            "leave-last-out:1, cutoff:2024-01-01, or none."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split and the models.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Length of each user's list.")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated baselines, e.g. ease,ials.")] = None,
    skip_invalid_rows: Annotated[
        bool, typer.Option(help="Skip and count bad rows instead of failing.")
    ] = False,
    dask: DaskOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recommend for every user of DATA_DIR and, with a test set, evaluate.

    Example: m6rec run data/ml-100k --out runs/ml --split random:0.25
    """
    from m6rec.config import RunConfig
    from pipelines.run import run_pipeline

    run_config = RunConfig.from_yaml(config) if config else RunConfig()
    if split is not None:
        run_config.split = split
    if seed is not None:
        run_config.seed = seed
    if top_k is not None:
        run_config.top_k = top_k
    if models:
        run_config.baselines.models = [name.strip() for name in models.split(",") if name.strip()]
    run_config.skip_invalid_rows = skip_invalid_rows or run_config.skip_invalid_rows
    _use_dask(run_config, dask)
    result = run_pipeline(data_dir, out, run_config)
    _print_result(result, as_json)


def _use_dask(run_config, address: str | None) -> None:
    """``--dask``, checked, into ``run_config`` (it beats the configuration's ``dask.address``)."""
    if address is not None:
        from m6rec.config import check_dask_address

        run_config.dask = run_config.dask.replace(address=check_dask_address(address))


@app.command(short_help="The nightly batch alone: lists from a trained model.")
def batch(
    data_dir: Annotated[
        Path, typer.Argument(metavar="DATA_DIR", help="Dataset directory with tonight's interactions.")
    ],
    model: Annotated[Path, typer.Option("--model", "-m", help="Output folder of the training run.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder of the lists (default: MODEL/lists).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML run configuration: its serving settings apply (top_k, batch, ...)."),
    ] = None,
    dask: DaskOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write every user's list of DATA_DIR with the model trained into MODEL: the same code as the
    batch-recommend flow, with no Prefect. Work follows what changed (sources fold in the new
    interactions, only changed users are scored; nothing is redone when nothing changed).

    Example: m6rec batch demo-out/catalogue --model demo-out/run
    """
    from m6rec.cluster import open_executor
    from m6rec.config import RunConfig
    from pipelines.batch import batch_recommend
    from pipelines.run_folder import RunFolder

    run_config = RunConfig.from_yaml(config) if config else RunConfig()
    _use_dask(run_config, dask)
    lists = out if out is not None else RunFolder(model).lists.root
    with open_executor(run_config.dask) as executor:
        result = batch_recommend(data_dir, model, lists, run_config, executor=executor)
    if as_json:
        typer.echo(json.dumps(result.headline(), indent=2, default=str))
        return
    counts = result.summary.get("counts", {})
    typer.echo(f"recommendations: {result.recommendations_path}")
    typer.echo(
        f"{counts.get('users', '?')} users ({counts.get('users_scored', 0)} scored, the others kept), "
        f"{counts.get('list_rows', '?')} list rows, ranked by {result.summary.get('selected_model')}"
    )


@app.command(short_help="The nightly embedding stage alone (incremental).")
def embed(
    data_dir: Annotated[
        Path,
        typer.Argument(
            metavar="DATA_DIR", help="Dataset directory (items with text, image_path, audio_path; kg)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory; files go to OUT/features/.")],
    config: Annotated[
        Path | None, typer.Option(help="YAML run configuration (its 'embeddings' section).")
    ] = None,
    modalities: Annotated[str | None, typer.Option(help=f"Comma-separated: {','.join(MODALITIES)}.")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Ignore any GPU.")] = False,
    skip_invalid_rows: Annotated[
        bool, typer.Option(help="Skip and count bad rows instead of failing.")
    ] = False,
    dask: DaskOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compute frozen item embeddings (text, image, audio, KG), the two-tower vectors, the fused vectors and
    user profiles into OUT/features/*.parquet. Re-runs embed only new or changed items.

    Example: m6rec embed demo-out/catalogue --out demo-out/run
    """
    from m6rec.cluster import open_executor
    from m6rec.config import RunConfig
    from m6rec.data.dataset import load_dataset
    from pipelines.embeddings import compute_embeddings

    run_config = RunConfig.from_yaml(config) if config else RunConfig()
    embedding_config = run_config.embeddings
    if modalities:
        embedding_config.modalities = [name.strip() for name in modalities.split(",") if name.strip()]
    embedding_config.force_cpu = cpu or embedding_config.force_cpu
    reading = run_config.reading()
    reading["skip_invalid_rows"] = skip_invalid_rows or run_config.skip_invalid_rows
    dataset = load_dataset(data_dir, **reading)
    _use_dask(run_config, dask)
    with open_executor(run_config.dask) as executor:
        result = compute_embeddings(
            dataset, out, embedding_config, keep=run_config.keep_generations, executor=executor
        )
    if as_json:
        typer.echo(json.dumps(result.summary(), indent=2, default=str))
        return
    for name, counts in result.counts.items():
        typer.echo(f"{name}: {counts}")
    typer.echo(
        f"features: {result.features_dir} ({len(result.problems)} items with problems, see problems.json)"
    )


@app.command(short_help="Generate the demo catalogue and run the nightly flow on it.")
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the catalogue and the run go.")] = Path(
        "demo-out"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic catalogue.")] = 7,
    as_json: JsonOption = False,
) -> None:
    """Generate the synthetic demo catalogue into OUT/catalogue and run the nightly flow into OUT/run:
    item embeddings, ranker training, every user's list (OUT/run/lists) and the report, on Prefect's local
    ephemeral API (no server needed; PREFECT_API_URL, when set, sends the runs to that server instead).

    Example: m6rec demo --out demo-out
    """
    from m6rec.demo_catalogue import DemoCatalogueSpec, generate_demo_catalogue

    catalogue = generate_demo_catalogue(out / "catalogue", DemoCatalogueSpec(seed=seed))
    typer.echo(f"demo catalogue (synthetic): {catalogue}", err=True)
    _prefect_environment()
    from flows.nightly import nightly

    result = nightly(data_dir=str(catalogue.resolve()), out_dir=str((out / "run").resolve()))
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    _print_nightly(result)
    _print_next_steps(out / "run", Path(result["lists"]))


@app.command(short_help="One user's list with the reasons for each item.")
def recommend(
    out: Annotated[
        Path,
        typer.Argument(metavar="OUT_DIR", help="Output directory of a run (holds recommendations.parquet)."),
    ],
    user: Annotated[str, typer.Option("--user", "-u", help="Raw user ID.")],
    top_features: Annotated[int, typer.Option(min=0, help="How many ranker features to show per item.")] = 3,
    as_json: JsonOption = False,
) -> None:
    """Print one user's list with reasons: the candidate sources that proposed each item (with their ranks)
    and, when the ranker made the list, the ranker features that pushed it up. The list is the one the
    folder serves now: its published batch lists (OUT_DIR/lists) when there are any, else the training
    run's; the first line says which file and generation.

    Example: m6rec recommend demo-out/run --user user-0001
    """
    from pipelines.explain import explain_user

    frame = explain_user(out, user, top_features=top_features)
    served = frame.attrs.pop("served")
    if as_json:
        typer.echo(frame.to_json(orient="records", indent=2, default_handler=str))
        return
    typer.echo(
        f"lists: {served.lists.recommendations} (generation {served.generation}, ranked by {served.selected})"
    )
    label = next((column for column in ("title", "name", "description") if column in frame.columns), None)
    for _, row in frame.iterrows():
        name = f"  {row[label]}" if label and isinstance(row[label], str) else ""
        typer.echo(f"{row['rank']:>3}. {row['item_id']}{name}  score {row['score']:.3f}")
        typer.echo(f"     because: {row['reasons']}")


@app.command(short_help="Publish an output folder's previous generation again.")
def rollback(
    out: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="Output directory of a run or a batch.")],
    to: Annotated[
        str | None, typer.Option(help="Generation to publish (e.g. 000004); default: the previous one.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Point OUT_DIR/current back at an earlier generation: every file a reader sees (lists, model,
    embeddings, report) switches back at once. Each run publishes a new generation; the last
    keep_generations (default 3) are kept.

    Example: m6rec rollback demo-out/run
    """
    from m6rec.errors import M6RecError
    from m6rec.locking import folder_lock
    from pipelines.run_folder import generations

    history = generations(out)
    if not history.folder.is_dir():
        raise M6RecError(f"{out}: no generations to roll back to (not an m6rec output folder?)")
    with folder_lock(out):
        published = history.rollback(to)
        listed = [generation.name for generation in history.complete()]
    if as_json:
        typer.echo(json.dumps({"published": published.name, "info": published.info, "generations": listed}))
        return
    typer.echo(
        f"{out}: generation {published.name} ({published.info.get('kind')}, {published.info.get('created_at')}) is published"
    )
    typer.echo(f"generations kept: {', '.join(listed)}")


@app.command(short_help="Check a dataset directory; report what was read.")
def validate(
    data_dir: Annotated[Path, typer.Argument(metavar="DATA_DIR", help="Dataset directory to check.")],
    skip_invalid_rows: Annotated[
        bool, typer.Option(help="Count bad rows instead of stopping at the first.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check a dataset directory against the contract and print what was read, skipped and merged, how
    weights and times are read, each column's role (declared in columns.yaml or inferred) and the cold
    items and users.

    Example: m6rec validate data/ml-100k --skip-invalid-rows
    """
    from m6rec.data.dataset import load_dataset
    from m6rec.data.summary import describe_dataset

    summary = describe_dataset(load_dataset(data_dir, skip_invalid_rows=skip_invalid_rows))
    typer.echo(json.dumps(summary.to_dict(), indent=2) if as_json else summary.render_text().rstrip("\n"))


@app.command("inspect", short_help="Look into a Parquet file: schema, vectors, neighbours.")
def inspect_command(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="A Parquet file: features/*.parquet, recommendations.parquet, any other."
        ),
    ],
    sample: Annotated[
        int | None,
        typer.Option(
            min=0, help="Rows to show, drawn at random (seed 0). Default 5, or 0 with --id/--neighbours."
        ),
    ] = None,
    id_value: Annotated[
        str | None, typer.Option("--id", help="Show the rows whose ID column equals this.")
    ] = None,
    id_column: Annotated[
        str | None, typer.Option(help="ID column for --id and --neighbours (default: the file's key).")
    ] = None,
    neighbours: Annotated[
        str | None, typer.Option(help="List the nearest neighbours by cosine of this ID's vector.")
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="How many neighbours.")] = 10,
    vector_column: Annotated[
        str | None, typer.Option(help="Vector column for --neighbours (default: the first one).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show a Parquet file's schema, metadata, null counts, vector statistics, rows with problems and a
    sample of rows; optionally the rows of one ID and an item's nearest neighbours.

    Example: m6rec inspect demo-out/run/features/text.parquet --neighbours item-0001 --k 5
    """
    from pipelines.inspect import inspect_parquet

    if sample is None:
        sample = 0 if id_value is not None or neighbours is not None else 5
    result = inspect_parquet(
        path,
        sample=sample,
        id_value=id_value,
        id_column=id_column,
        neighbours_of=neighbours,
        k=k,
        vector_column=vector_column,
    )
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.render_text().rstrip("\n"))


@datasets_app.command("prepare", short_help="Convert a public dataset into an m6rec dataset directory.")
def datasets_prepare(
    name: Annotated[str, typer.Argument(metavar="NAME", help="movielens-100k or lastfm-hetrec.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write.")],
    source: Annotated[
        Path | None,
        typer.Option(
            help="Raw distribution: a folder or the official zip. "
            "Downloaded from the official URL when omitted."
        ),
    ] = None,
    kgcn: Annotated[
        Path | None,
        typer.Option(help="Folder with KGCN's kg.txt and item_index2entity_id.txt (lastfm-hetrec only)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Convert a public dataset into an m6rec dataset directory.

    Example: m6rec datasets prepare movielens-100k --source ~/Downloads/ml-100k.zip --out data/ml-100k
    """
    from m6rec.data.prepare import prepare_dataset

    prepared = prepare_dataset(name, out, source=source, kgcn=kgcn)
    if as_json:
        summary = {"name": prepared.name, "out_dir": str(prepared.out_dir), "rows": prepared.row_counts}
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"prepared {prepared.name} in {prepared.out_dir}: {prepared.row_counts}")


@datasets_app.command("synth", short_help="Generate a synthetic dataset of any size (scale benchmarks).")
def datasets_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write.")],
    users: Annotated[int, typer.Option(help="Number of users (exact).")],
    items: Annotated[int, typer.Option(help="Number of items (exact, at least 2).")],
    interactions: Annotated[
        int, typer.Option(help="Distinct (user, item) pairs, test ones included (exact, at least --users).")
    ],
    seed: Annotated[
        int | None, typer.Option(help="Seed (default 0); the same options give byte-identical files.")
    ] = None,
    test_share: Annotated[
        float | None,
        typer.Option(help="Share of each user's latest interactions in test.parquet (default 0.1); 0: none."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Generate a synthetic dataset directory: Zipf item popularity, lognormal user activity, one latent
    topic per user and item (most of a user's interactions come from its topic; item text reflects it).
    The knobs beyond these options are in m6rec.data.synth.SyntheticSpec.

    Example: m6rec datasets synth --out /tmp/synth --users 1000000 --items 100000 --interactions 20000000
    """
    import time

    from m6rec.data.synth import SyntheticSpec, generate_synthetic_dataset, read_synth_manifest

    options = {"seed": seed, "test_share": test_share}
    spec = SyntheticSpec(
        users=users,
        items=items,
        interactions=interactions,
        **{name: value for name, value in options.items() if value is not None},
    )
    started = time.perf_counter()
    out_dir = generate_synthetic_dataset(out, spec)
    seconds = round(time.perf_counter() - started, 2)
    counts = read_synth_manifest(out_dir)["counts"]
    if as_json:
        typer.echo(json.dumps({"out_dir": str(out_dir), "counts": counts, "seconds": seconds}, indent=2))
        return
    typer.echo(
        f"wrote a synthetic dataset to {out_dir} in {seconds:.1f} s: {counts['users']:,} users, "
        f"{counts['items']:,} items, {counts['interactions']:,} interactions, "
        f"{counts['test_interactions']:,} test interactions"
    )


FLOW_NAMES = ("nightly", "nightly-embeddings", "train-ranker", "batch-recommend")


@flows_app.command("run", short_help="Run one flow now, in this process.")
def flows_run(
    name: Annotated[
        str,
        typer.Argument(metavar="NAME", help="nightly, nightly-embeddings, train-ranker or batch-recommend."),
    ],
    data_dir: Annotated[Path, typer.Argument(metavar="DATA_DIR", help="Dataset directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (the model and its lists).")],
    config: Annotated[Path | None, typer.Option(help="YAML run configuration.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Run one flow now, in this process.

    Runs on Prefect's local ephemeral API, or on the server at PREFECT_API_URL when set. batch-recommend
    needs a model trained into OUT by train-ranker or nightly.

    Example: m6rec flows run nightly demo-out/catalogue --out demo-out/run
    """
    if name not in FLOW_NAMES:
        raise typer.BadParameter(f"{name!r}: expected one of {', '.join(FLOW_NAMES)}", param_hint="NAME")
    _check_config(config)
    _prefect_environment()
    from flows.deployments import DEPLOYMENTS, load_flow

    flow = load_flow(next(spec for spec in DEPLOYMENTS if spec.name == name))
    result = flow(
        data_dir=str(data_dir.resolve()),
        out_dir=str(out.resolve()),
        config_path=str(config.resolve()) if config else None,
    )
    if name == "nightly" and not as_json:
        _print_nightly(result)
    else:
        typer.echo(json.dumps(result, indent=2, default=str))


# Options shared by `flows serve` and `flows deploy`: where the deployments read and write.
DeploymentDataOption = Annotated[
    Path | None, typer.Option("--data", help="Dataset directory (default: $M6REC_DATA_DIR or /data).")
]
DeploymentOutOption = Annotated[
    Path | None, typer.Option("--out", "-o", help="Output directory (default: $M6REC_OUT_DIR or /outputs).")
]
DeploymentConfigOption = Annotated[
    Path | None, typer.Option(help="YAML run configuration (default: $M6REC_CONFIG).")
]


@flows_app.command("serve", short_help="Serve every deployment with its schedule from this process.")
def flows_serve(
    data: DeploymentDataOption = None,
    out: DeploymentOutOption = None,
    config: DeploymentConfigOption = None,
    limit: Annotated[int, typer.Option(min=1, help="How many flow runs may run at once.")] = 1,
) -> None:
    """Serve every deployment from this process (one machine) until stopped.

    nightly-embeddings runs daily at 02:00 UTC, train-ranker on Sundays at 03:00 UTC, batch-recommend
    after each completed nightly-embeddings run, nightly on demand. Needs a Prefect server (PREFECT_API_URL).

    Example: PREFECT_API_URL=http://127.0.0.1:4200/api m6rec flows serve --data data/shop --out runs/shop
    """
    _prefect_environment()
    _require_prefect_server("serve")
    from flows.deployments import serve_deployments

    serve_deployments(*_deployment_paths(data, out, config), limit=limit)


@flows_app.command("deploy", short_help="Register the deployments for a process worker.")
def flows_deploy(
    data: DeploymentDataOption = None,
    out: DeploymentOutOption = None,
    config: DeploymentConfigOption = None,
    pool: Annotated[str, typer.Option(help="Process work pool (created if missing).")] = "m6rec",
    as_json: JsonOption = False,
) -> None:
    """Register every deployment with the Prefect server for a process worker.

    The deployments and schedules of `m6rec flows serve`, registered at PREFECT_API_URL for the work pool
    POOL; `prefect worker start --pool m6rec --type process` then runs them.

    Example: m6rec flows deploy && prefect worker start --pool m6rec --type process
    """
    _prefect_environment()
    _require_prefect_server("deploy")
    from flows.deployments import deploy_to_work_pool

    names = deploy_to_work_pool(*_deployment_paths(data, out, config), work_pool=pool)
    if as_json:
        typer.echo(json.dumps({"work_pool": pool, "deployments": list(names)}, indent=2))
        return
    for name in names:
        typer.echo(f"deployed {name} (work pool {pool})")


def _prefect_environment() -> None:
    """Prefect defaults, set before Prefect is imported: no analytics, and a patient start of the local
    ephemeral API, whose first start migrates a fresh database and can take a minute on a busy machine."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _require_prefect_server(command: str) -> None:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise M6RecError(
            f"m6rec flows {command} needs a Prefect server, and PREFECT_API_URL is not set",
            hint="start one with `prefect server start`, then export PREFECT_API_URL=http://127.0.0.1:4200/api",
        )


def _check_config(config: Path | None) -> None:
    """Validate a configuration file now, before any flow or stage starts."""
    if config is not None:
        from m6rec.config import RunConfig

        RunConfig.from_yaml(config)


def _deployment_paths(data: Path | None, out: Path | None, config: Path | None) -> tuple[str | None, ...]:
    _check_config(config)
    return tuple(None if path is None else str(path.resolve()) for path in (data, out, config))


def _print_nightly(result: dict) -> None:
    typer.echo(f"recommendations: {result['lists']}")
    typer.echo(f"report: {result['report']}")
    final = (result.get("metrics") or {}).get("final")
    if final:
        shown = {
            key: round(value, 4) for key, value in final.items() if key.split("@")[0] in ("ndcg", "recall")
        }
        typer.echo(f"final list ({result['selected_model']}): {shown}")
    elif not result["retrained"]:
        typer.echo(f"model trained {result['model_age_days']:.1f} days ago: not retrained")


def _print_result(result, as_json: bool) -> None:
    metrics_path = result.folder.metrics if result.metrics else None
    if as_json:
        summary = {
            "recommendations": str(result.recommendations_path),
            "metrics_file": None if metrics_path is None else str(metrics_path),
            "selected_model": result.selected_model,
            "metrics": result.metrics,
        }
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    typer.echo(f"recommendations: {result.recommendations_path}")
    if result.metrics:
        typer.echo(f"metrics: {metrics_path}")
        final = result.metrics["final"]
        shown = {
            key: round(value, 4) for key, value in final.items() if key.split("@")[0] in ("ndcg", "recall")
        }
        typer.echo(f"final list ({result.selected_model}): {shown}")


def _print_next_steps(run_dir: Path, lists: Path) -> None:
    """The three commands a new user types next, with a real item and user of this run."""
    import pyarrow.parquet as pq

    from pipelines.run_folder import RunFolder

    first = pq.read_table(lists, columns=["user_id", "item_id"]).slice(0, 1).to_pylist()
    if not first:
        return
    user, item = first[0]["user_id"], first[0]["item_id"]
    folder = RunFolder(run_dir)
    candidates = (folder.features_dir / f"{name}.parquet" for name in ("fused", "text", "cf_items"))
    features = next((path for path in candidates if path.exists()), None)
    typer.echo("next:")
    if features is not None:
        typer.echo(f"  m6rec inspect {features} --neighbours {item} --k 5")
    typer.echo(f"  m6rec recommend {run_dir} --user {user}")
    typer.echo(f"  xdg-open {folder.report_page}   # the run report, in a browser")


def _click():
    """The click that the installed typer runs on: its own copy (typer 0.29 and later, ``typer._click``)
    or the ``click`` package."""
    try:
        from typer import _click as click_package
    except ImportError:
        import click as click_package
    return click_package


def _context_of(argv: list[str]):
    """A click context for the deepest (sub)command named in ``argv``, for errors raised without one."""
    import typer.main

    command = typer.main.get_command(app)
    ctx = _click().core.Context(command, info_name="m6rec")
    for token in argv:
        subcommands = getattr(command, "commands", {})
        if token in subcommands:
            command = subcommands[token]
            ctx = _click().core.Context(command, info_name=token, parent=ctx)
    return ctx


def _usage_error(error, argv: list[str]) -> int:
    """Print a command-line usage error as its usage line and one error line; return exit code 2."""
    ctx = error.ctx if error.ctx is not None else _context_of(argv)
    message = " ".join(error.format_message().split())
    if ctx is not None and hasattr(ctx.command, "list_commands") and not ctx.invoked_subcommand:
        message = f"{message.rstrip('.')}: one of {', '.join(ctx.command.list_commands(ctx))}"
    if ctx is not None:
        typer.echo(" ".join(ctx.get_usage().split()), err=True)
        message += f" (see '{ctx.command_path} --help')"
    typer.echo(f"error: {message}", err=True)
    return 2


# Set unless the user set them: no model hub is reached unless asked for.
OFFLINE_ENVIRONMENT = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
ALLOW_DOWNLOADS = "M6REC_ALLOW_DOWNLOADS"


def offline_by_default(argv: list[str]) -> None:
    """Keep every command but ``datasets prepare`` (a download command) off the network: the Hugging Face
    libraries are set offline, so a model that is not on disk is one clear error, never a download.
    ``M6REC_ALLOW_DOWNLOADS=1`` (or setting those variables yourself) lets a hub model download."""
    if os.environ.get(ALLOW_DOWNLOADS) == "1" or [arg for arg in argv if not arg.startswith("-")][:2] == [
        "datasets",
        "prepare",
    ]:
        return
    for name in OFFLINE_ENVIRONMENT:
        os.environ.setdefault(name, "1")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``m6rec`` console script. A usage error prints the usage line and one error line
    and exits 2; a user's data or configuration mistake prints one ``error:`` line (and a ``hint:``) and
    exits 2; neither shows a traceback."""
    configure_logging()
    argv = sys.argv[1:] if argv is None else list(argv)
    offline_by_default(argv)
    click_exceptions = _click().exceptions
    try:
        exit_code = app(args=argv, prog_name="m6rec", standalone_mode=False)
    except M6RecError as error:
        typer.echo(f"error: {error}", err=True)
        if getattr(error, "hint", None):
            typer.echo(f"hint: {error.hint}", err=True)
        sys.exit(2)
    except FileNotFoundError as error:
        typer.echo(f"error: {error.filename}: no such file or directory", err=True)
        sys.exit(2)
    except OSError as error:  # exists, not a directory, read-only, no space, permission: the machine's
        typer.echo(
            f"error: {_os_error_line(error)}; nothing was published, the last good outputs are kept", err=True
        )
        sys.exit(2)
    except click_exceptions.UsageError as error:
        sys.exit(_usage_error(error, argv))
    except click_exceptions.ClickException as error:
        typer.echo(f"error: {' '.join(error.format_message().split())}", err=True)
        sys.exit(error.exit_code)
    except (typer.Abort, getattr(click_exceptions, "Abort", typer.Abort)):
        typer.echo("aborted", err=True)
        sys.exit(1)
    if isinstance(exit_code, int) and exit_code:
        sys.exit(exit_code)


def _os_error_line(error: OSError) -> str:
    """An operating-system error as one line: the path(s) it names and what went wrong."""
    import errno

    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        reason = "no space left on the device"
    paths = [str(path) for path in (error.filename, error.filename2) if path]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason

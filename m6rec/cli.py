"""The ``m6rec`` command line. Heavy libraries are imported inside commands so ``--help`` is instant."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from m6rec.errors import M6RecError

app = typer.Typer(
    help="m6rec: offline multimodal two-stage recommendations.\n\nExample: m6rec demo --out demo-out",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
datasets_app = typer.Typer(help="Prepare public datasets as m6rec dataset directories.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


@app.command()
def run(
    data_dir: Annotated[
        Path, typer.Argument(help="Dataset directory (interactions, items, users, kg, test).")
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
    result = run_pipeline(data_dir, out, run_config)
    _print_result(result)


@app.command()
def embed(
    data_dir: Annotated[
        Path, typer.Argument(help="Dataset directory (items with text, image_path, audio_path; kg).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory; files go to OUT/features/.")],
    config: Annotated[
        Path | None, typer.Option(help="YAML run configuration (its 'embeddings' section).")
    ] = None,
    modalities: Annotated[str | None, typer.Option(help="Comma-separated: text,image,audio,kg,cf.")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Ignore any GPU.")] = False,
    skip_invalid_rows: Annotated[
        bool, typer.Option(help="Skip and count bad rows instead of failing.")
    ] = False,
) -> None:
    """Compute frozen item embeddings (text, image, audio, KG), the two-tower vectors, the fused vectors and
    user profiles into OUT/features/*.parquet. Re-runs embed only new or changed items.

    Example: m6rec embed demo-out/catalogue --out demo-out/run
    """
    from m6rec.config import RunConfig
    from m6rec.data.dataset import load_dataset
    from pipelines.embeddings import compute_embeddings

    run_config = RunConfig.from_yaml(config) if config else RunConfig()
    embedding_config = run_config.embeddings
    if modalities:
        embedding_config.modalities = [name.strip() for name in modalities.split(",") if name.strip()]
        embedding_config.__post_init__()
    embedding_config.force_cpu = cpu or embedding_config.force_cpu
    dataset = load_dataset(data_dir, skip_invalid_rows=skip_invalid_rows or run_config.skip_invalid_rows)
    result = compute_embeddings(dataset, out / "features", embedding_config)
    for name, counts in result.counts.items():
        typer.echo(f"{name}: {counts}")
    typer.echo(
        f"features: {result.features_dir} ({len(result.problems)} items with problems, see problems.json)"
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the catalogue and the run go.")] = Path(
        "demo-out"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic catalogue.")] = 7,
) -> None:
    """Generate the synthetic demo catalogue into OUT/catalogue and run the main job into OUT/run.

    Example: m6rec demo --out demo-out
    """
    from m6rec.config import RunConfig
    from m6rec.demo_catalogue import DemoCatalogueSpec, generate_demo_catalogue
    from pipelines.run import run_pipeline

    catalogue = generate_demo_catalogue(out / "catalogue", DemoCatalogueSpec(seed=seed))
    typer.echo(f"demo catalogue (synthetic): {catalogue}", err=True)
    _print_result(run_pipeline(catalogue, out / "run", RunConfig()))


@app.command()
def recommend(
    out: Annotated[Path, typer.Argument(help="Output directory of a run (holds recommendations.parquet).")],
    user: Annotated[str, typer.Option("--user", "-u", help="Raw user ID.")],
    top_features: Annotated[int, typer.Option(help="How many ranker features to show per item.")] = 3,
) -> None:
    """Print one user's list with reasons: the candidate sources that proposed each item (with their ranks)
    and the ranker features that pushed it up.

    Example: m6rec recommend demo-out/run --user user-0001
    """
    from pipelines.explain import explain_user

    frame = explain_user(out, user, top_features=top_features)
    label = next((column for column in ("title", "name", "description") if column in frame.columns), None)
    for _, row in frame.iterrows():
        name = f"  {row[label]}" if label and isinstance(row[label], str) else ""
        typer.echo(f"{row['rank']:>3}. {row['item_id']}{name}  score {row['score']:.3f}")
        typer.echo(f"     because: {row['reasons']}")


@app.command()
def validate(
    data_dir: Annotated[Path, typer.Argument(help="Dataset directory to check.")],
    skip_invalid_rows: Annotated[
        bool, typer.Option(help="Count bad rows instead of stopping at the first.")
    ] = False,
) -> None:
    """Check a dataset directory against the contract and print what was read and skipped.

    Example: m6rec validate data/ml-100k --skip-invalid-rows
    """
    from m6rec.data.dataset import load_dataset

    dataset = load_dataset(data_dir, skip_invalid_rows=skip_invalid_rows)
    typer.echo(json.dumps(dataset.report.to_dict(), indent=2))


@datasets_app.command("prepare")
def datasets_prepare(
    name: Annotated[str, typer.Argument(help="movielens-100k or lastfm-hetrec.")],
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
) -> None:
    """Convert a public dataset into an m6rec dataset directory.

    Example: m6rec datasets prepare movielens-100k --source ~/Downloads/ml-100k.zip --out data/ml-100k
    """
    from m6rec.data.prepare import prepare_dataset

    prepared = prepare_dataset(name, out, source=source, kgcn=kgcn)
    typer.echo(f"prepared {prepared.name} in {prepared.out_dir}: {prepared.row_counts}")


def _print_result(result) -> None:
    typer.echo(f"recommendations: {result.recommendations_path}")
    if result.metrics:
        typer.echo(f"metrics: {result.out_dir / 'metrics.json'}")
        final = result.metrics["final"]
        shown = {
            key: round(value, 4) for key, value in final.items() if key.split("@")[0] in ("ndcg", "recall")
        }
        typer.echo(f"final list ({result.selected_model}): {shown}")


def main() -> None:
    """Entry point of the ``m6rec`` console script: user errors become one line and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        app(standalone_mode=False)
    except M6RecError as error:
        typer.echo(f"error: {error}", err=True)
        if getattr(error, "hint", None):
            typer.echo(f"hint: {error.hint}", err=True)
        sys.exit(2)
    except FileNotFoundError as error:
        typer.echo(f"error: {error.filename}: no such file or directory", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(1)
    except SystemExit:
        raise
    except Exception as error:
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise

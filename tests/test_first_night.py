"""What a new user meets on the first night: text read from whatever column holds it, and a run that
finishes with the defaults on a catalogue whose items file holds only IDs."""

from __future__ import annotations

import shutil

import pandas as pd

from features.text import default_text_columns, render_item_texts
from m6rec.config import RunConfig
from m6rec.data.columns import resolve_columns
from pipelines.run import run_pipeline


def test_the_default_text_reads_every_text_column_and_leaves_codes_out():
    items = pd.DataFrame(
        {
            "item_id": ["0", "1", "2"],
            "asin": ["B00TNNWMXI", "B00IBZE2EQ", "B01ABCDEFG"],
            "text": [
                "eSUN Bronze filament 1.75mm 0.5kg spool for Makerbot",
                "FlashForge platform sticker for Creator Pro, pack of 6",
                "Digital caliper, stainless steel, 150 mm",
            ],
        }
    )
    roles = resolve_columns(items, "item_id")
    assert roles.role("asin") == "ignored", "a code per row is neither text nor a category"
    assert default_text_columns(roles) == ["text"]
    assert (
        render_item_texts(items, None, roles)[0]
        == "text: eSUN Bronze filament 1.75mm 0.5kg spool for Makerbot"
    )


def test_the_defaults_finish_on_a_catalogue_whose_items_hold_only_ids(tiny_flow_inputs, tmp_path, caplog):
    import logging

    source, _ = tiny_flow_inputs
    catalogue = shutil.copytree(source, tmp_path / "catalogue")
    pd.read_parquet(catalogue / "items.parquet")[["item_id"]].to_parquet(
        catalogue / "items.parquet", index=False
    )
    (catalogue / "kg.parquet").unlink()
    with caplog.at_level(logging.INFO, logger="m6rec"):
        result = run_pipeline(catalogue, tmp_path / "run", RunConfig())
    lists = pd.read_parquet(result.recommendations_path)
    assert lists.groupby("user_id").size().eq(RunConfig().top_k).all()
    said = " ".join(record.getMessage() for record in caplog.records)
    assert "text: 48 of 48 items have no vector (most often: empty text)" in said
    assert "content steps aside" in said

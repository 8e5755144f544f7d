"""A team's own data, as kar-feast meets it in a plugin trial: string ids, its own column names and formats.

``write_team_tables`` writes customers (parquet: ``customer_id`` like ``C-0042``, ``segment``, ``country``),
products (JSON lines: ``sku`` like ``SKU-017``, ``title``, ``category``, ``price``) and click events (CSV with
a header: ``customer_id, sku, ts`` as ISO-8601 text, ``clicked`` 0/1), plus the spec that maps them. Clicks
follow a planted taste (segment × category), so a ranker has something to learn.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

SEGMENTS = ("outdoor", "kitchen", "tech")
CATEGORIES = ("camping", "cookware", "audio", "lighting")
COUNTRIES = ("DE", "FR", "NL")
# P(click) by segment (rows) and category (columns).
TASTE = np.array([[0.8, 0.2, 0.3, 0.6], [0.2, 0.85, 0.3, 0.4], [0.3, 0.2, 0.85, 0.5]])


def customer_id(i: int) -> str:
    return f"C-{i:04d}"


def sku(i: int) -> str:
    return f"SKU-{i:03d}"


def write_team_tables(
    folder: Path, *, customers: int = 300, products: int = 200, events: int = 5000, seed: int = 0
) -> Path:
    """Write the team's three tables and ``spec.yaml`` into ``folder``; returns the spec's path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    segment = rng.integers(0, len(SEGMENTS), customers)
    pd.DataFrame(
        {
            "customer_id": [customer_id(i) for i in range(1, customers + 1)],
            "segment": [SEGMENTS[s] for s in segment],
            "country": rng.choice(COUNTRIES, customers),
            "email": [f"c{i}@example.com" for i in range(1, customers + 1)],  # never copied: not in the spec
        }
    ).to_parquet(folder / "customers.parquet", index=False)
    category = rng.integers(0, len(CATEGORIES), products)
    pd.DataFrame(
        {
            "sku": [sku(i) for i in range(1, products + 1)],
            "title": [f"{CATEGORIES[c].title()} item {i}" for i, c in enumerate(category, start=1)],
            "category": [CATEGORIES[c] for c in category],
            "price": np.round(rng.uniform(5, 300, products), 2),
        }
    ).to_json(folder / "products.jsonl", orient="records", lines=True)
    who = rng.integers(0, customers, events)
    what = rng.integers(0, products, events)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    when = sorted(start + timedelta(seconds=int(s)) for s in rng.integers(0, 90 * 86_400, events))
    clicked = (rng.random(events) < TASTE[segment[who], category[what]]).astype(int)
    pd.DataFrame(
        {
            "customer_id": [customer_id(i + 1) for i in who],
            "sku": [sku(i + 1) for i in what],
            "ts": [t.isoformat().replace("+00:00", "Z") for t in when],
            "clicked": clicked,
        }
    ).to_csv(folder / "clicks.csv", index=False)
    spec = {
        "name": "shop",
        "interactions": {
            "path": "clicks.csv",
            "user_id": "customer_id",
            "item_id": "sku",
            "timestamp": "ts",
            "label": "clicked",
        },
        "users": {
            "path": "customers.parquet",
            "id": "customer_id",
            "attributes": ["segment", "country"],
            "prompt_fields": ["segment"],
        },
        "items": {
            "path": "products.jsonl",
            "id": "sku",
            "attributes": {"title": "string", "category": "string", "price": "double"},
        },
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path

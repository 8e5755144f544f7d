"""Writers of tiny raw dataset files in the exact source formats, for loader and bad-input tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
BASE_TS = 880_000_000


def ml100k_ratings(n_users: int = 6, n_items: int = 8, per_user: int = 6) -> list[str]:
    """Deterministic ratings: user u rates items u..u+per_user-1 (mod n_items), one second apart."""
    lines = []
    for user in range(1, n_users + 1):
        for k in range(per_user):
            item = (user + k - 1) % n_items + 1
            rating = (user + item) % 5 + 1
            lines.append(f"{user}\t{item}\t{rating}\t{BASE_TS + user * 1000 + k}")
    return lines


def write_ml100k(folder: Path, *, ratings: list[str] | None = None, n_users: int = 6, n_items: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)) + "\n")
    users = [f"{u}|{20 + u}|{'MF'[u % 2]}|engineer|0{u}123" for u in range(1, n_users + 1)]
    (folder / "u.user").write_text("\n".join(users) + "\n")
    items = []
    for i in range(1, n_items + 1):
        flags = ["1" if g == i % 19 else "0" for g in range(19)]
        items.append("|".join([str(i), f"Movie {i} ({1990 + i})", f"01-Jan-{1990 + i}", "", "http://x", *flags]))
    # One Latin-1 title, as in the real u.item.
    items[0] = items[0].replace("Movie 1", "Misérables, Les")
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    lines = ratings if ratings is not None else ml100k_ratings(n_users, n_items)
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    return folder


def write_ml1m(folder: Path, *, ratings_name: str = "ratings.dat") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n")
    movies = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Misérables, Les (1995)::Drama|Musical\n"
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    ratings = [f"{u}::{i}::{(u + i) % 5 + 1}::{978300000 + u * 10 + i}" for u in (1, 2, 3) for i in (1, 2)]
    (folder / ratings_name).write_text("\n".join(ratings) + "\n")
    return folder


def write_amazon(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    reviews = [
        {
            "overall": float((u + i) % 5 + 1),
            "reviewerID": f"A{u}X",
            "asin": f"B00{i}",
            "unixReviewTime": 1_400_000_000 + u * 100 + i,
        }
        for u in range(1, 4)
        for i in range(1, 4)
    ]
    reviews.append({"overall": 5.0, "reviewerID": "A1X", "asin": "B999", "unixReviewTime": 1_400_000_999})
    meta = [
        {
            "asin": f"B00{i}",
            "title": f"Gadget {i}",
            "brand": "Acme",
            "category": ["Electronics", f"Cat{i}"],
            "description": ["Nice.", "Small."],
        }
        for i in range(1, 4)
    ]
    with gzip.open(folder / "Electronics_5.json.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in reviews) + "\n{not json\n")
    with gzip.open(folder / "meta_Electronics.json.gz", "wt") as f:
        f.write("\n".join(json.dumps(m) for m in meta) + "\n")
    return folder

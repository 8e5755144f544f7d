"""Rank one user's candidate items from Feast online features: the library behind ``kar serve``.

:class:`OnlineScorer` loads a trained ranker once and, per request, reads the user's and the candidates'
features from the online store (:class:`kar.serving.online.OnlineLookup`, feature service ``ranking_serving`` by
default: profiles + the adapted knowledge vectors ``kar adapt export`` stored), builds the candidates frame
and scores it in one forward pass. No HTTP here: the service (``kar.serving.service``) and the benchmark call it, and
so can any Python serving stack.

Unknown ids never fail a request. An entity the online store does not have reads as missing features: the
encoder maps them to the out-of-vocabulary id and the knowledge vector to zeros with ``has_knowledge`` false,
which is exactly how such a row scores offline. The ranking reports which entities fell back this way.

Ids are the entities' own join-key values: a team's ``"C-0042"`` in its repo, kar's int64 ids in the example
repo. Where the ranker reads ``user_id``/``item_id`` (the int64 ids it learnt embeddings for), they come from the
prepared folder's id maps; an id the maps do not know scores as an unknown entity.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kar.contracts.errors import KarError
from kar.serving.store import SERVING_SERVICE
from spark_jobs.id_maps import UNKNOWN_ID

if TYPE_CHECKING:
    from feast import FeatureStore

    from ctr.trainer import Ranker
    from kar.serving.online import OnlineFeatures

ENTITY_KEYS = ("user_id", "item_id")


@dataclass(frozen=True, kw_only=True)
class ScoredItem:
    """One candidate's score.

    Attributes:
        item_id: The candidate.
        score: Click probability.
        has_knowledge: The item's adapted knowledge vector was in the online store.
        fallback: The online store has no features for the item (scored with out-of-vocabulary defaults).
    """

    item_id: Any
    score: float
    has_knowledge: bool
    fallback: bool


@dataclass(frozen=True, kw_only=True)
class Ranking:
    """A request's candidates, best first, and where the time went.

    Attributes:
        user_id: The user.
        items: Candidates sorted by descending score (ties keep request order).
        user_fallback: The online store has no features for the user.
        user_has_knowledge: The user's adapted knowledge vector was in the online store.
        fetch_ms: Reading the online store.
        model_ms: Building the frame, encoding it and the forward pass.
    """

    user_id: Any
    items: tuple[ScoredItem, ...]
    user_fallback: bool
    user_has_knowledge: bool
    fetch_ms: float
    model_ms: float

    @property
    def item_fallbacks(self) -> int:
        """Candidates scored without online features."""
        return sum(item.fallback for item in self.items)


class OnlineScorer:
    """A trained torch ranker scoring candidates from a feature service of the online store.

    Args:
        ranker: A ranker from ``ctr.load_ranker`` (the run ``kar train`` wrote: torch or XGBoost).
        store: An applied and materialized ``FeatureStore``.
        service: The feature service to read; ``ranking_serving`` holds the adapted knowledge vectors.
        data_dir: The prepared folder, whose id maps turn the entities' own ids into the ranker's int64 ids.

    Raises:
        KarError: The service and the request context cannot provide a column the ranker reads.
    """

    def __init__(
        self, *, ranker: Ranker, store: FeatureStore, service: str = SERVING_SERVICE, data_dir: Path | None = None
    ) -> None:
        from kar.serving.online import OnlineLookup
        from spark_jobs.id_maps import IdMap

        self.ranker = ranker
        self.service = service
        # Only what the ranker reads: parsing unused profile text (titles, descriptions) costs more than the model.
        wanted = _ranker_columns(ranker)
        for key, columns in OnlineLookup(store, service=service).columns().items():
            profile = _profile(key, columns)
            if profile and not wanted.intersection(profile):
                wanted.add(profile[0])  # one profile feature still tells whether the entity is in the store
        self._lookup = OnlineLookup(store, service=service, features=wanted)
        self.roles = self._lookup.roles
        self._keys = {"user": self.roles.user.join_key, "item": self.roles.item.join_key}
        self._id_maps = {role: IdMap.load(data_dir, role) if data_dir else None for role in ("user", "item")}
        served = self._lookup.columns()
        self.context_fields = _context_fields(ranker, served, service=service)
        # One knowledge view per entity: its has_ flag says whether the entity's vector was found.
        self._knowledge_flags = {
            key: next((c for c in cols if c.startswith("has_")), None) for key, cols in served.items()
        }
        self._profile_columns = {key: _profile(key, columns) for key, columns in served.items()}

    @classmethod
    def from_run(
        cls, *, model_dir: Path, store: FeatureStore, service: str = SERVING_SERVICE, data_dir: Path | None = None
    ) -> OnlineScorer:
        """Load the ranker a run wrote to ``model_dir`` (torch or XGBoost) and read features from ``store``.

        Raises:
            KarError: ``model_dir`` is not a finished ``kar train`` run.
        """
        from ctr import load_ranker
        from ctr.runs import CONFIG_FILE

        model_dir = Path(model_dir)
        if not (model_dir / CONFIG_FILE).is_file():
            raise KarError(f"{model_dir}: no {CONFIG_FILE}; pass a run folder written by `kar train`")
        return cls(ranker=load_ranker(model_dir), store=store, service=service, data_dir=data_dir)

    def fetch(self, *, user_id: Any, item_ids: Sequence[Any]) -> OnlineFeatures:
        """The online features of the user and the candidates (what :meth:`rank` scores)."""
        return self._lookup.fetch(user_id=user_id, item_ids=item_ids)

    def rank(self, *, user_id: Any, item_ids: Sequence[Any], context: Mapping[str, Any] | None = None) -> Ranking:
        """Score ``item_ids`` for ``user_id`` in one batch and sort them, best first.

        Args:
            user_id: The user (the user entity's join-key value).
            item_ids: Candidate items (at least one).
            context: Request-time fields the store does not hold, e.g. ``hist_item_ids`` (the user's recent
                items, oldest first). Absent fields are empty. See :attr:`context_fields`.

        Raises:
            KarError: ``context`` names a field the ranker does not read from the request.
        """
        context = dict(context or {})
        unknown = sorted(set(context) - set(self.context_fields))
        if unknown:
            allowed = ", ".join(self.context_fields) or "none"
            raise KarError(f"context: unknown field {unknown[0]!r} (this model reads: {allowed})")
        user_id = self._key_value("user", user_id)
        item_ids = [self._key_value("item", i) for i in item_ids]
        started = time.perf_counter()
        features = self.fetch(user_id=user_id, item_ids=item_ids)
        fetched = time.perf_counter()
        frame = self._with_ids(features.candidates_frame(**{**self.context_fields, **context}), user_id, item_ids)
        scores = self.ranker.predict(frame)
        done = time.perf_counter()
        return self._ranking(user_id, item_ids, features, scores, fetch_s=fetched - started, model_s=done - fetched)

    def _key_value(self, role: str, value: Any) -> Any:
        """An id as its entity's join key holds it: int64 ids may come as digits, never as other text.

        Raises:
            KarError: A non-integer id for an int64 join key.
        """
        entity = self.roles.of(role)
        try:
            return entity.key_value(value)
        except (TypeError, ValueError):
            raise KarError(
                f"{role}_id {value!r}: the {entity.entity} entity's join key {entity.join_key} holds int64 ids"
            ) from None

    def _with_ids(self, frame: Any, user_id: Any, item_ids: Sequence[Any]) -> Any:
        """The ranker's ``user_id``/``item_id`` (int64) where the store's join keys are the team's own ids."""
        ids = {"user": [user_id] * len(item_ids), "item": list(item_ids)}
        added = {}
        for role in ("user", "item"):
            column = f"{role}_id"
            if self._keys[role] == column:
                continue
            id_map = self._id_maps[role]
            added[column] = id_map.ids(ids[role]) if id_map is not None else [int(i) for i in ids[role]]
        return frame.assign(**added) if added else frame

    def _known(self, role: str, ids: Sequence[Any]) -> np.ndarray:
        """Whether the prepared data knows each id (its id map; without one, every id counts as known)."""
        id_map = self._id_maps[role]
        if id_map is None:
            return np.ones(len(ids), dtype=bool)
        return np.array([i != UNKNOWN_ID for i in id_map.ids(ids)], dtype=bool)

    def _ranking(
        self,
        user_id: Any,
        item_ids: Sequence[Any],
        features: OnlineFeatures,
        scores: np.ndarray,
        *,
        fetch_s: float,
        model_s: float,
    ) -> Ranking:
        n = len(item_ids)
        item_flag = self._knowledge_flags.get(self._keys["item"])
        has_knowledge = features.items[item_flag] if item_flag else np.zeros(n, dtype=bool)
        item_profile = self._profile_columns.get(self._keys["item"], [])
        missing = _missing(features.items, item_profile, n, self._known("item", item_ids))
        order = np.argsort(-scores, kind="stable")
        items = tuple(
            ScoredItem(
                item_id=item_ids[i],
                score=float(scores[i]),
                has_knowledge=bool(has_knowledge[i]),
                fallback=bool(missing[i]),
            )
            for i in order
        )
        user = {k: [v] for k, v in features.user.items()}
        user_flag = self._knowledge_flags.get(self._keys["user"])
        user_profile = self._profile_columns.get(self._keys["user"], [])
        return Ranking(
            user_id=user_id,
            items=items,
            user_fallback=bool(_missing(user, user_profile, 1, self._known("user", [user_id]))[0]),
            user_has_knowledge=bool(features.user[user_flag]) if user_flag else False,
            fetch_ms=fetch_s * 1e3,
            model_ms=model_s * 1e3,
        )


def _profile(join_key: str, columns: Sequence[str]) -> list[str]:
    """Profile features: a missing entity reads as None there (its vectors read as zeros, flagged by has_)."""
    return [c for c in columns if c != join_key and not c.startswith("has_") and f"has_{c}" not in columns]


def _missing(columns: Mapping[str, Any], names: Sequence[str], n: int, known: np.ndarray) -> np.ndarray:
    """Rows where every profile feature is absent: the online store has no such entity. A service with no
    profile view for the entity cannot tell: then an entity the prepared data does not know is missing."""
    if not names:
        return ~known
    missing = np.ones(n, dtype=bool)
    for name in names:
        missing &= np.array([value is None for value in columns[name]], dtype=bool)
    return missing


def _ranker_columns(ranker: Ranker) -> set[str]:
    """The frame columns the ranker reads, with the pre-adapted name of each knowledge field."""
    from ctr.models import adapted_name

    columns = set(ranker.encoder.spec.columns)
    knowledge = ranker.config.knowledge.fields if ranker.config.knowledge else ()
    return columns | {adapted_name(name) for name in knowledge}


def _context_fields(ranker: Ranker, served: Mapping[str, Sequence[str]], *, service: str) -> dict[str, Any]:
    """The ranker's columns that come with the request, each with its empty default.

    Raises:
        KarError: A column is neither served nor a request-time field (e.g. a raw knowledge vector the
            service does not hold).
    """
    from ctr.models import adapted_name

    spec = ranker.encoder.spec
    provided = {column for columns in served.values() for column in columns}
    knowledge = ranker.config.knowledge.fields if ranker.config.knowledge else ()
    provided |= {name for name in knowledge if adapted_name(name) in provided}
    missing_dense = [f.name for f in spec.dense if f.name not in provided]
    if missing_dense:
        raise KarError(
            f"the model reads {missing_dense[0]!r}, which feature service {service!r} does not hold "
            f"(it gives: {', '.join(sorted(provided))}); pass the service whose views the model was trained on"
        )
    context: dict[str, Any] = {f.name: [] for f in spec.sequence if f.name not in provided}
    context |= {f.name: None for f in spec.sparse if f.name not in provided and f.name not in ENTITY_KEYS}
    return context

"""A trained adaptor on disk, apart from the ranker it was trained with: ``adaptor.json`` + ``adaptor.pt``.

The ranker's trainer writes both into its run folder; ``kar adapt export`` reads only them, so exporting adapted
vectors needs neither the ranker nor its feature encoder.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from adaptors.hea import AdaptorConfig, HybridExpertAdaptor
from kar.contracts.errors import DataError

ADAPTOR_CONFIG_FILE = "adaptor.json"
ADAPTOR_WEIGHTS_FILE = "adaptor.pt"
ADAPTOR_FORMAT = "kar-feast/knowledge-adaptor"


def save_adaptor(adaptor: HybridExpertAdaptor, *, config: AdaptorConfig, inputs: dict[str, int], run_dir: Path) -> None:
    """Write the adaptor's config, input sizes and weights into ``run_dir``."""
    state = {"format": ADAPTOR_FORMAT, "version": 1, "config": asdict(config), "inputs": inputs}
    (Path(run_dir) / ADAPTOR_CONFIG_FILE).write_text(json.dumps(state, indent=2) + "\n")
    torch.save(adaptor.state_dict(), Path(run_dir) / ADAPTOR_WEIGHTS_FILE)


def load_adaptor(run_dir: Path) -> tuple[HybridExpertAdaptor, AdaptorConfig]:
    """The adaptor a ranker run trained, in eval mode, and its config.

    Raises:
        DataError: If ``run_dir`` holds no adaptor (a run without knowledge, or not a run folder).
    """
    path = Path(run_dir) / ADAPTOR_CONFIG_FILE
    if not path.is_file():
        raise DataError(f"{run_dir}: no {ADAPTOR_CONFIG_FILE}; train a ranker with a `knowledge:` section first")
    state = json.loads(path.read_text())
    if state.get("format") != ADAPTOR_FORMAT:
        raise DataError(f"{path}: not a {ADAPTOR_FORMAT} file")
    raw = state["config"]
    config = AdaptorConfig(
        **{**raw, "fields": tuple(raw["fields"]), "hidden": tuple(raw["hidden"])},
    )
    adaptor = HybridExpertAdaptor.from_config(config, inputs=state["inputs"])
    adaptor.load_state_dict(torch.load(Path(run_dir) / ADAPTOR_WEIGHTS_FILE, weights_only=True))
    return adaptor.eval(), config

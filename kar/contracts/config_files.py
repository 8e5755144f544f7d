"""Reading the YAML files users write (specs, experiments), with the file and line in every error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kar.contracts.errors import DataError


def load_yaml(path: Path) -> Any:
    """The parsed file.

    Raises:
        DataError: ``FILE:LINE: invalid YAML: …`` naming what the parser found.
    """
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None

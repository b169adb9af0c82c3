"""Where datasets come from: built-in sources chosen by name, or a CSV with its spec (bring your own)."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from learning_machine.data.spec import DataQualityReport, DatasetSpec, load_spec, parse_spec
from learning_machine.errors import DatasetError, UnknownNameError

WINDOW_SUFFIX = ".window.json"
"""Beside an exported CSV (``rows.csv`` -> ``rows.csv.window.json``): when its rows were predicted
(``first_at``, ``last_at``), the change point they were taken after (``since``) and the last prediction id
(``cut_id``). Reading the CSV adds these to the dataset's parameters, and so to the data manifest."""


def write_window(csv: Path, window: dict[str, Any]) -> None:
    import json

    Path(str(csv) + WINDOW_SUFFIX).write_text(json.dumps(window, default=str))


def read_window(csv: Path) -> dict[str, Any]:
    """The window written beside ``csv`` (:func:`write_window`), only its known scalar keys; {} without one."""
    import json

    path = Path(str(csv) + WINDOW_SUFFIX)
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{str(path)!r} is not a readable window file: {exc}") from exc
    return {k: raw[k] for k in ("first_at", "last_at", "since", "cut_id")
            if isinstance(raw, dict) and isinstance(raw.get(k), str | int)}


@dataclass
class LoadedDataset:
    """A dataset checked against its spec, with where it came from."""

    spec: DatasetSpec
    frame: pd.DataFrame
    source_uri: str
    params: dict[str, Any] = field(default_factory=dict)
    quality: DataQualityReport | None = None
    """Quality of the rows as read, before coercion to the spec's types (None: generated, valid by design)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def digest(self) -> str:
        """Content digest of the frame (stable across runs for the same rows)."""
        hashed = pd.util.hash_pandas_object(self.frame, index=False).values.tobytes()
        return hashlib.sha256(hashed).hexdigest()[:16]


def builtin_spec(name: str) -> DatasetSpec:
    """The spec shipped with the package for a built-in dataset."""
    ref = resources.files("learning_machine.data").joinpath("specs", f"{name}.yaml")
    if not ref.is_file():
        raise UnknownNameError("dataset", name, list(SOURCES))
    import yaml

    return parse_spec(yaml.safe_load(ref.read_text()), source=f"{name}.yaml")


class DatasetSource(ABC):
    """A named dataset. Subclasses register themselves in :data:`SOURCES`."""

    name: str

    @property
    def spec(self) -> DatasetSpec:
        return builtin_spec(self.name)

    @abstractmethod
    def load(self, *, n_rows: int | None = None, seed: int = 0, **options: Any) -> LoadedDataset:
        """The dataset's rows as a frame in spec order."""


class SyntheticCohortSource(DatasetSource):
    """Generated patients from a known risk function, with optional drift scenarios."""

    name = "synthetic-cohort"

    def load(self, *, n_rows: int | None = None, seed: int = 0, **options: Any) -> LoadedDataset:
        from learning_machine.data.synthetic import generate_cohort

        n_rows = n_rows or 5000
        scenario = str(options.pop("scenario", "none"))
        drift_start = int(options.pop("drift_start", 0))
        cohort = generate_cohort(n_rows, seed=seed, scenario=scenario, drift_start=drift_start, **options)
        params = {"rows": n_rows, "seed": seed, "scenario": scenario, "drift_start": drift_start, **options}
        query = "&".join(f"{k}={v}" for k, v in params.items())
        spec = self.spec
        return LoadedDataset(spec, spec.coerce_frame(cohort.frame), f"generator://{self.name}?{query}", params)


class BreastCancerSource(DatasetSource):
    """scikit-learn's bundled Wisconsin diagnostic breast cancer data (no download)."""

    name = "breast-cancer"

    def load(self, *, n_rows: int | None = None, seed: int = 0, **options: Any) -> LoadedDataset:
        from sklearn.datasets import load_breast_cancer

        if options:
            raise DatasetError(f"dataset 'breast-cancer' takes no options, got: {', '.join(options)}")
        bunch = load_breast_cancer(as_frame=True)
        frame = bunch.data.rename(columns=lambda c: c.replace(" ", "_"))
        # scikit-learn codes malignant as 0; the platform predicts the clinically positive class.
        frame["outcome"] = 1 - bunch.target
        frame.insert(0, "record_id", [f"BC{i:04d}" for i in range(len(frame))])
        if n_rows is not None:
            frame = frame.sample(n=min(n_rows, len(frame)), random_state=seed).sort_index()
        spec = self.spec
        return LoadedDataset(spec, spec.coerce_frame(frame), "sklearn://datasets/load_breast_cancer",
                             {"rows": len(frame)})


SOURCES: dict[str, DatasetSource] = {s.name: s for s in (SyntheticCohortSource(), BreastCancerSource())}


def load_csv(path: str | Path, spec: DatasetSpec | str | Path) -> LoadedDataset:
    """Bring your own data: a CSV file with the columns its spec names."""
    path = Path(path)
    spec = spec if isinstance(spec, DatasetSpec) else load_spec(spec)
    try:
        raw = pd.read_csv(path)
    except FileNotFoundError as exc:
        raise DatasetError(f"dataset file {str(path)!r} does not exist") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"dataset file {str(path)!r} is not a readable CSV: {exc}") from exc
    quality = spec.quality(raw)
    frame = spec.coerce_frame(raw)
    return LoadedDataset(spec, frame, path.resolve().as_uri(), {"rows": len(frame), "path": str(path)}, quality)


def load_dataset(name: str, *, spec_path: str | Path | None = None, n_rows: int | None = None, seed: int = 0,
                 **options: Any) -> LoadedDataset:
    """A built-in dataset by name, or a CSV path with ``spec_path``; unknown names list the valid ones."""
    if name in SOURCES:
        if spec_path is not None:
            raise DatasetError(f"{name!r} is a built-in dataset with its own spec; drop the spec file")
        return SOURCES[name].load(n_rows=n_rows, seed=seed, **options)
    if name.endswith(".csv") or Path(name).is_file():
        if spec_path is None:
            raise DatasetError(f"dataset {name!r} is a file: give its spec with --spec (see README)")
        return load_csv(name, spec_path)
    raise UnknownNameError("dataset", name, list(SOURCES))


def spec_for(name: str, spec_path: str | Path | None = None) -> DatasetSpec:
    """The spec of a dataset name (built-in) or of a spec file."""
    if spec_path is not None:
        return load_spec(spec_path)
    if name in SOURCES:
        return SOURCES[name].spec
    raise UnknownNameError("dataset", name, list(SOURCES))

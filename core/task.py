"""The ``Task`` contract a domain implements, and the registry the CLI and workflows use.

A task plugs a field into the generic chain ``prepare -> train -> (baselines) -> infer ->
evaluate -> report`` (:mod:`diffsci.core.stages`). It owns what is specific to its field (data
files, network, loss, inference, metrics, figures); the core owns training, checkpoints,
provenance and reports. A task is glue: the logic it calls lives in the domain's modules of
fixed roles (``io``, ``simulate``, ``operators``, ``models``, ``baselines``, ``metrics``,
``plots``; see CONTRIBUTING.md).

Domains register through the ``diffsci.tasks`` entry-point group (one line in the
distribution's metadata), so third-party packages can add their own.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "Task",
    "DomainTask",
    "EvalResult",
    "LossFn",
    "Config",
    "Card",
    "Files",
    "Runtime",
    "TaskPaths",
    "get_task",
    "list_tasks",
    "schema_path",
    "config_path",
    "domain_module",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "diffsci.tasks"

#: A validated domain config (the YAML mapping with the schema's defaults filled in).
Config = Mapping[str, Any]


@dataclass(frozen=True)
class Runtime:
    """Where and how a stage runs: the torch ``device`` and whether to show progress bars."""

    device: torch.device
    progress: bool = False


#: A model card (:mod:`diffsci.core.modelcard`): a JSON mapping.
Card = dict[str, Any]
#: The user's input files (or folders such as zarr stores) of ``apply``.
Files = Sequence[Path]

#: ``loss(model, batch, rng) -> scalar or {"loss": scalar, <logged terms>...}``; all
#: randomness through the ``torch.Generator`` ``rng``.
LossFn = Callable[[nn.Module, Any, torch.Generator], "Tensor | dict[str, Tensor]"]


class TaskPaths:
    """Where a domain's stages read and write, under one work directory.

    ``data/`` (prepare), ``model.pt`` (train), ``checkpoints/`` (train's resumable state; not
    a Snakemake output, so a failed job never deletes it), ``baselines/`` (trained or fitted
    baselines and their predictions), ``predictions/`` (infer), ``metrics.json`` and
    ``figures/`` (evaluate), ``tables/`` (report: one CSV per metric table).
    """

    def __init__(self, workdir: str | Path) -> None:
        self.root = Path(workdir)
        self.data = self.root / "data"
        self.model = self.root / "model.pt"
        self.checkpoints = self.root / "checkpoints"
        self.baselines = self.root / "baselines"
        self.predictions = self.root / "predictions"
        self.metrics = self.root / "metrics.json"
        self.figures = self.root / "figures"
        self.tables = self.root / "tables"


@dataclass
class EvalResult:
    """What a task's ``evaluate`` returns; ``metrics.json`` and the report read only this.

    Attributes
    ----------
    tables
        ``{table title: {method: {metric: value}}}``; values are numbers (or short strings).
    lower_is_better
        Metric names for which a lower value is better (the report marks the best method).
    figures
        Figure files written into the figure folder, relative to the work directory
        (``figures/<name>.png``).
    summary
        Headline numbers and settings of the run: ``{label: value}`` (JSON-serialisable).
    """

    tables: dict[str, dict[str, dict[str, Any]]]
    lower_is_better: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for title, rows in self.tables.items():
            if not isinstance(rows, Mapping) or not all(
                isinstance(r, Mapping) for r in rows.values()
            ):
                raise TypeError(f"EvalResult table {title!r} must map method -> {{metric: value}}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Task(Protocol):
    """What a domain provides. ``cfg`` is the validated config mapping of the domain."""

    name: str
    #: Path of the JSON schema (YAML) the config is validated against.
    schema_path: Path
    #: The config's top-level keys that shape the trained weights besides ``train``; the train
    #: stage refuses to resume a checkpoint made under other values of them.
    training_config_keys: Sequence[str]
    #: Distributions whose versions the provenance record lists (besides the core's).
    packages: Sequence[str]

    def prepare(self, cfg: Config, data_dir: Path) -> None:
        """Write the training/evaluation data (field-native formats) into ``data_dir``."""

    def build_model(self, cfg: Config) -> nn.Module:
        """The denoiser ``D(x, sigma, cond)`` (untrained)."""

    def train_dataset(self, cfg: Config, data_dir: Path) -> torch.utils.data.Dataset:
        """Training samples; items are what the loss receives (collated)."""

    def make_loss(self, cfg: Config, data_dir: Path) -> LossFn:
        """The training loss, built from the config (and the prepared data's statistics)."""

    def baselines(self, cfg: Config, data_dir: Path, out_dir: Path, rt: Runtime) -> None:
        """Fit or train the domain's baselines; write them and their predictions to ``out_dir``."""

    def infer(
        self, cfg: Config, model: nn.Module, data_dir: Path, out_dir: Path, rt: Runtime
    ) -> None:
        """Run inference on the evaluation data; write predictions (native formats)."""

    def evaluate(self, cfg: Config, paths: TaskPaths, fig_dir: Path) -> EvalResult:
        """Metrics of the model and the baselines (``paths.predictions``, ``paths.baselines``);
        figures go into ``fig_dir``."""


class DomainTask:
    """Defaults for the optional parts of :class:`Task`; a domain's task may subclass it."""

    name: str = ""
    schema_path: Path
    training_config_keys: Sequence[str] = ("seed", "data", "model", "loss")
    packages: Sequence[str] = ()

    def model_card(self, cfg: Config, data_dir: Path) -> dict[str, Any]:
        """The domain's part of the model card (:mod:`diffsci.core.modelcard`): ``serves``
        (sizes, grids, variables/genes by name, physical parameters) and optionally
        ``normalisation`` and ``sigma``. Default: nothing the model is known to serve."""
        return {"serves": {}}

    def check_inputs(self, cfg: Config, card: dict[str, Any], data_dir: Path) -> None:
        """Refuse (:class:`~diffsci.core.modelcard.Incompatible`) or warn about evaluation data
        in ``data_dir`` that the trained model (its ``card``) cannot serve. Default: no check."""

    def apply(
        self, cfg: Config, model: nn.Module, card: Card, inputs: Files, out_dir: Path, rt: Runtime
    ) -> None:
        """Run the trained model on the user's ``inputs`` (files in the field's formats), checked
        against ``card``; write native outputs into ``out_dir``."""
        raise NotImplementedError(
            f"domain {self.name!r} cannot apply a trained model to new files yet; run its "
            "pipeline with `source: {kind: files, ...}` in the config instead"
        )

    def baselines(self, cfg: Config, data_dir: Path, out_dir: Path, rt: Runtime) -> None:
        """No trained baselines: the domain's baselines are computed by ``infer``/``evaluate``."""


def _entry_points() -> dict[str, md.EntryPoint]:
    return {ep.name: ep for ep in md.entry_points(group=ENTRY_POINT_GROUP)}


def _unknown(name: str, eps: Mapping[str, Any]) -> KeyError:
    if name in unregistered_domains():
        return KeyError(_not_registered(name))
    return KeyError(f"unknown domain {name!r}; registered: {', '.join(sorted(eps)) or 'none'}")


def unregistered_domains() -> list[str]:
    """Subpackages of ``diffsci.domains`` with a ``task`` module but no entry point (added to the
    source tree without reinstalling the package)."""
    import pkgutil

    try:
        import diffsci.domains as pkg
    except ImportError:
        return []
    registered = {ep.module.rpartition(".")[0] for ep in _entry_points().values()}
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        name = f"{pkg.__name__}.{info.name}"
        if info.ispkg and name not in registered and importlib.util.find_spec(f"{name}.task"):
            found.append(info.name)
    return sorted(found)


def list_tasks() -> list[str]:
    """Names of the registered domains (whether or not their extras are installed).

    Warns about a domain package present in the source tree but not registered (its entry
    point is read from the installed metadata: reinstall after adding one).
    """
    for d in unregistered_domains():
        warnings.warn(_not_registered(d), stacklevel=2)
    return sorted(_entry_points())


def _not_registered(name: str) -> str:
    return (
        f"domain {name!r} is in diffsci.domains but has no entry point in the installed "
        f'metadata: add `{name} = "diffsci.domains.{name}.task:<Task class> [{name}]"` to '
        '[project.entry-points."diffsci.tasks"] in pyproject.toml and reinstall '
        "(pip install -e '.[all]')"
    )


def _load(ep: md.EntryPoint) -> Any:
    try:
        return ep.load()
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        extra = ep.extras[0] if ep.extras else ep.name
        raise ImportError(
            f"domain {ep.name!r} ({ep.value}) cannot load: missing module {missing!r}; install "
            f"its extra: pip install 'diffsci[{extra}]' (or 'diffsci[all]')"
        ) from e


def get_task(name: str) -> Task:
    """Instantiate the registered task ``name``."""
    eps = _entry_points()
    if name not in eps:
        raise _unknown(name, eps)
    obj = _load(eps[name])
    task = obj() if isinstance(obj, type) else obj
    if not isinstance(task, Task):
        missing = [
            m for m in ("make_loss", "baselines", "evaluate", "infer") if not hasattr(task, m)
        ]
        raise TypeError(
            f"entry point {name!r} does not implement the Task protocol (missing: "
            f"{', '.join(missing) or 'attributes'}); see diffsci.core.task.Task"
        )
    return task


def domain_module(name: str) -> str:
    """The package of domain ``name`` (the entry point's module without its last part)."""
    eps = _entry_points()
    if name not in eps:
        raise _unknown(name, eps)
    return eps[name].module.rpartition(".")[0] or eps[name].module


def schema_path(name: str) -> Path:
    """The config schema of domain ``name`` without importing its (heavy) task module.

    Convention: ``config.schema.yaml`` beside the module the entry point names.
    """
    eps = _entry_points()
    if name not in eps:
        raise _unknown(name, eps)
    spec = importlib.util.find_spec(eps[name].module)
    if spec is None or spec.origin is None:
        raise KeyError(f"domain {name!r}: module {eps[name].module} not found")
    path = Path(spec.origin).with_name("config.schema.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"domain {name!r}: schema {path} missing")
    return path


def config_path(domain: str, overrides: Mapping[str, Any] | None = None) -> str:
    """Config file of ``domain`` for the workflows: ``<domain>_config`` in the Snakemake config
    (``--config pde_config=FILE``) overrides ``workflows/config/<domain>.yaml``."""
    return str((overrides or {}).get(f"{domain}_config", f"workflows/config/{domain}.yaml"))

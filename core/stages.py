"""The generic pipeline stages every domain runs: prepare, train, baselines, infer, evaluate,
report.

Each stage reads a validated config, calls the domain's :class:`~diffsci.core.task.Task`, and
writes its outputs so that a failed run never leaves an output that looks complete: folders
are built under a temporary name and renamed into place, files are replaced atomically.
Every output carries a provenance record (config, seed, versions, git commit).
"""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from .datasource import data_record, expand_paths, fingerprint
from .fileio import atomic_dir
from .lock import stage_lock
from .modelcard import Incompatible, card_path, new_card, read_card
from .modelfile import load_model_file, save_model_file
from .provenance import provenance, write_json_atomic
from .task import DomainTask, EvalResult, Runtime, Task, TaskPaths, get_task
from .training import TrainConfig, train

__all__ = [
    "load_config",
    "validate_config",
    "load_model",
    "run_stage",
    "STAGES",
    "TRAINING_CONFIG_KEYS",
]

STAGES = ("prepare", "train", "baselines", "infer", "evaluate", "report")
#: Config keys whose values are saved with a training checkpoint and must match on resume (a
#: task may name its own in ``training_config_keys``).
TRAINING_CONFIG_KEYS = ("seed", "data", "model", "loss")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML 1.2 requires
    unique keys; PyYAML silently keeps the last, so a typo'd repeat would change a run)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key]} and {line})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, task: Task) -> dict[str, Any]:
    """Read a YAML config and validate it against the task's JSON schema (defaults filled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        loader = _UniqueKeyLoader(path.read_text())
        try:
            cfg = loader.get_single_data() or {}
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: top level must be a mapping, got {type(cfg).__name__}")
    validate_config(cfg, task.schema_path, source=str(path))
    return cfg


def _registry(schema_file: Path):
    """A ``referencing`` registry resolving relative ``$ref`` files against ``schema_file``'s
    folder, as ``snakemake.utils.validate`` does (so both accept the same schemas)."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from referencing import Registry, Resource

    def retrieve(uri: str) -> Resource:
        return Resource.from_contents(
            yaml.safe_load(Path(url2pathname(urlparse(uri).path)).read_text())
        )

    return Registry(retrieve=retrieve)


def validate_config(cfg: dict[str, Any], schema_path: Path, *, source: str = "config") -> None:
    """Validate ``cfg`` in place (defaults filled) with the same schema Snakemake uses."""
    import jsonschema

    schema_path = Path(schema_path).resolve()
    schema = yaml.safe_load(schema_path.read_text())
    schema["$id"] = schema_path.as_uri()
    validator_cls = jsonschema.validators.validator_for(schema)

    def set_defaults(validator, properties, instance, schema):
        for prop, sub in properties.items():
            if isinstance(instance, dict) and "default" in sub:
                instance.setdefault(prop, copy.deepcopy(sub["default"]))
        yield from validator_cls.VALIDATORS["properties"](validator, properties, instance, schema)

    filling = jsonschema.validators.extend(validator_cls, {"properties": set_defaults})
    validator = filling(schema, registry=_registry(schema_path))
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        lines = [f"  {'/'.join(map(str, e.path)) or '<top>'}: {e.message}" for e in errors[:10]]
        raise ValueError(f"{source} fails the schema {schema_path.name}:\n" + "\n".join(lines))


def _device(cfg: Mapping[str, Any]) -> torch.device:
    want = str(cfg.get("device", "auto"))
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"config device={want!r} but no CUDA device is available on this machine")
    return torch.device(want)


def _provenance(task: Task, cfg: Mapping[str, Any]) -> dict[str, Any]:
    return provenance(config=dict(cfg), seed=cfg.get("seed"), packages=task.packages)


def run_prepare(task: Task, cfg: dict[str, Any], paths: TaskPaths, **_: Any) -> None:
    with atomic_dir(paths.data) as tmp:
        task.prepare(cfg, tmp)
        write_json_atomic(tmp / "provenance.json", _provenance(task, cfg))


def run_train(
    task: Task,
    cfg: dict[str, Any],
    paths: TaskPaths,
    *,
    progress: bool = True,
    ckpt_dir: str | Path | None = None,
    **_: Any,
) -> None:
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    model = task.build_model(cfg)
    data = task.train_dataset(cfg, paths.data)
    loss = task.make_loss(cfg, paths.data)
    ckpt = str(ckpt_dir or paths.checkpoints)
    tcfg = TrainConfig(**{**cfg["train"], "seed": seed, "progress": progress, "ckpt_dir": ckpt})
    settings = {k: cfg[k] for k in task.training_config_keys if k in cfg}
    # the bytes trained on: a checkpoint of other data (same shapes, overwritten in data/, which
    # Snakemake does not see) is refused instead of being returned as the "retrained" model
    settings["data_fingerprint"] = digest = fingerprint([paths.data])
    result = train(model, loss, data, tcfg, device=_device(cfg), settings=settings)
    net = result.ema if result.ema is not None else result.model
    data_part = data_record(cfg, paths.data, digest=digest)
    card = new_card(task.name, config=cfg, data=data_part, **task.model_card(cfg, paths.data))
    write_json_atomic(card_path(paths.model), card)
    save_model_file(
        paths.model,
        net.state_dict(),
        step=result.step,
        provenance=_provenance(task, cfg),
        card=card,
    )


def load_model(
    task: Task, cfg: Mapping[str, Any], path: Path, weights: Mapping[str, Any] | None = None
) -> torch.nn.Module:
    """Build the task's model and load trained weights from ``model.pt`` (or ``weights``
    already read from it)."""
    weights = load_model_file(path).state_dict if weights is None else weights
    model = task.build_model(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the model its config describes ({e})") from e
    return model.eval()


def _record_outputs(task: Task, cfg: Mapping[str, Any], folder: Path) -> None:
    """``provenance.json`` of a stage's output folder, listing the files the stage wrote (so
    evaluate can refuse a folder that lost one instead of skipping it: issue 23)."""
    record = _provenance(task, cfg)
    record["files"] = sorted(f.name for f in folder.iterdir())  # a zarr store counts as one
    write_json_atomic(folder / "provenance.json", record)


def _require_outputs(folder: Path, stage: str) -> None:
    """Refuse a stage output folder that is missing, or lacks a file its stage wrote."""
    fix = f"rerun the {stage} stage (`diffsci {stage}` or `snakemake --forcerun {stage}`)"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: missing ({fix})")
    prov = folder / "provenance.json"
    try:
        listed = json.loads(prov.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FileNotFoundError(
            f"{prov}: missing or unreadable, so what the {stage} stage wrote is unknown "
            f"({type(e).__name__}); {fix}"
        ) from None
    lost = [f for f in listed if not (folder / f).exists()]
    if lost:
        raise FileNotFoundError(
            f"{folder}: {len(lost)} of the files the {stage} stage wrote are gone "
            f"({', '.join(lost[:5])}); {fix}"
        )


def has_baselines(task: Task) -> bool:
    """Whether ``task`` has a baselines stage of its own (evaluate then requires its output)."""
    return getattr(type(task), "baselines", None) is not DomainTask.baselines


def run_baselines(
    task: Task, cfg: dict[str, Any], paths: TaskPaths, *, progress: bool = True, **_: Any
) -> None:
    with atomic_dir(paths.baselines) as tmp:
        task.baselines(cfg, paths.data, tmp, Runtime(_device(cfg), progress))
        _record_outputs(task, cfg, tmp)


def run_infer(
    task: Task, cfg: dict[str, Any], paths: TaskPaths, *, progress: bool = True, **_: Any
) -> None:
    device = _device(cfg)
    model = load_model(task, cfg, paths.model).to(device)
    if card_path(paths.model).is_file():  # models trained before model cards have none
        task.check_inputs(cfg, read_card(paths.model), paths.data)
    with atomic_dir(paths.predictions) as tmp:
        task.infer(cfg, model, paths.data, tmp, Runtime(device, progress))
        _record_outputs(task, cfg, tmp)


def run_evaluate(task: Task, cfg: dict[str, Any], paths: TaskPaths, **_: Any) -> None:
    if not paths.data.is_dir():
        raise FileNotFoundError(f"{paths.data}: missing (run the prepare stage first)")
    _require_outputs(paths.predictions, "infer")
    if has_baselines(task) or paths.baselines.is_dir():
        _require_outputs(paths.baselines, "baselines")
    with atomic_dir(paths.figures) as tmp:
        result = task.evaluate(cfg, paths, tmp)
    if not isinstance(result, EvalResult):
        raise TypeError(f"{task.name}: evaluate must return an EvalResult, got {type(result)}")
    out = {**result.to_json(), "provenance": _provenance(task, cfg), "domain": task.name}
    write_json_atomic(paths.metrics, out)


def _table_csv(path: Path, rows: Mapping[str, Mapping[str, Any]], first: str = "method") -> None:
    metrics = list(dict.fromkeys(k for r in rows.values() for k in r))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([first, *metrics])
        for method, r in rows.items():
            w.writerow([method, *(_cell(r.get(m, "")) for m in metrics)])


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def _slug(title: str) -> str:
    s = "".join(c if c.isalnum() else "_" for c in title.lower())
    return "_".join(p for p in s.split("_") if p)[:80] or "table"


def run_report(task: Task, cfg: dict[str, Any], paths: TaskPaths, **_: Any) -> None:
    """The metric tables of ``metrics.json`` as CSV files (one per table, plus ``summary.csv``)
    in ``tables/``, for ``snakemake --report`` and for notebooks."""
    if not paths.metrics.is_file():
        raise FileNotFoundError(f"{paths.metrics}: missing (run the evaluate stage first)")
    m = json.loads(paths.metrics.read_text())
    with atomic_dir(paths.tables) as tmp:
        for i, (title, rows) in enumerate(m["tables"].items()):
            _table_csv(tmp / f"{i:02d}_{_slug(title)}.csv", rows)
        summary = {k: {"value": v} for k, v in m.get("summary", {}).items()}
        _table_csv(tmp / "summary.csv", summary, first="quantity")


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["sampling.samples=16", ...]`` -> ``{"samples": 16}``: apply-time changes of the
    ``sampling`` section (values read as YAML scalars). The other sections describe how the
    model was trained and what it serves, so they cannot change at apply time."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--set {item!r}: expected sampling.<name>=<value>")
        if section != "sampling":
            raise ValueError(
                f"--set {item!r}: only sampling.* can change at apply time; {section!r} is "
                "part of how the model was trained (retrain with a new config instead)"
            )
        out[name] = yaml.safe_load(value)
    return out


def run_apply(
    domain: str,
    *,
    model: str | Path,
    inputs: list[str],
    output: str | Path,
    device: str = "auto",
    progress: bool = True,
    sampling: Mapping[str, Any] | None = None,
) -> None:
    """Apply the trained model ``model`` (its weights, card and training config) to ``inputs``;
    write the domain's native outputs and a provenance record into the folder ``output``.
    ``sampling`` overrides entries of the config's ``sampling`` section (validated by the
    domain's schema, recorded in the provenance)."""
    task = get_task(domain)
    model = Path(model)
    saved = load_model_file(model)
    card = read_card(model, {"card": saved.card})
    if card["domain"] != task.name:
        raise Incompatible(f"{model}: a {card['domain']!r} model, not {task.name!r}")
    cfg = copy.deepcopy(card["config"])
    validate_config(cfg, task.schema_path, source=f"{model} (its training config)")
    if sampling:
        cfg["sampling"] = {**cfg.get("sampling", {}), **sampling}
        validate_config(cfg, task.schema_path, source="--set (sampling overrides)")
    net = load_model(task, cfg, model, saved.state_dict).to(_device({"device": device}))
    files = expand_paths(inputs, key="--input")
    rt = Runtime(_device({"device": device}), progress)
    with atomic_dir(Path(output)) as tmp:
        task.apply(cfg, net, card, files, tmp, rt)
        record = _provenance(task, cfg)
        record["apply"] = {
            "model": str(model),
            "model_data_fingerprint": card["data"].get("fingerprint"),
            "inputs": list(map(str, files)),
            "inputs_fingerprint": fingerprint(files),
            "sampling_overrides": dict(sampling or {}),
        }
        write_json_atomic(tmp / "provenance.json", record)


_RUNNERS = {
    "prepare": run_prepare,
    "train": run_train,
    "baselines": run_baselines,
    "infer": run_infer,
    "evaluate": run_evaluate,
    "report": run_report,
}


def run_stage(
    stage: str,
    *,
    domain: str,
    config: str | Path,
    workdir: str | Path,
    progress: bool = True,
    **kwargs: Any,
) -> None:
    """Run one stage of ``domain`` with the config file ``config`` under ``workdir``."""
    if stage not in _RUNNERS:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    task = get_task(domain)
    cfg = load_config(config, task)
    with stage_lock(workdir, stage):
        _RUNNERS[stage](task, cfg, TaskPaths(workdir), progress=progress, **kwargs)

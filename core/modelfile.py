"""Model files that hold only tensors and plain data, so opening one cannot run code.

A trained model is the file scientists pass around (``diffsci apply --model FILE``). A pickled
``torch.save`` payload executes whatever its pickle says the moment a full unpickle opens it, which is why the field moved to tensor-only formats (Hugging
Face's safetensors; torch >= 2.6 loads with ``weights_only=True`` by default). diffsci's model
file is torch's weights-only format with a fixed layout::

    {"format": "diffsci-model", "format_version": 1,
     "state_dict": {name: tensor},
     "meta": "<JSON text: step, card, provenance, ...>"}

Everything that is not a tensor travels as one JSON string, so the file holds nothing that a
weights-only load has to trust, and every load in diffsci goes through :func:`load_model_file`
with ``weights_only=True``. Files written before this format (a pickled dict) are refused with
the one command that converts it, ``diffsci convert-model OLD NEW`` (which reads the old file
weights-only as well, so no diffsci command ever unpickles code).
torch's own format is used rather than safetensors to keep ``model.pt`` and avoid a new
dependency; both refuse code, and the layout above is what makes the metadata plain.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .fileio import atomic_path

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelFile",
    "UnsafeModelFile",
    "convert_model_file",
    "load_model_file",
    "save_model_file",
]

FORMAT = "diffsci-model"
FORMAT_VERSION = 1


class UnsafeModelFile(ValueError):
    """A model file diffsci will not open: it is not in the tensor-only format."""


@dataclass
class ModelFile:
    """The contents of a model file: weights and plain metadata (``step``, ``card``,
    ``provenance`` and anything else the writer stored)."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def card(self) -> dict[str, Any] | None:
        return self.meta.get("card")

    @property
    def provenance(self) -> dict[str, Any]:
        return self.meta.get("provenance") or {}

    @property
    def step(self) -> int | None:
        return self.meta.get("step")


def _plain(obj: Any) -> Any:
    """JSON fallback for numpy scalars/arrays and paths in metadata; anything else is refused
    at write time, so a file never holds metadata it could not read back."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"model file metadata must be plain data, got {type(obj).__name__}")


def save_model_file(path: str | Path, state_dict: Mapping[str, torch.Tensor], **meta: Any) -> None:
    """Write ``state_dict`` (moved to CPU, detached) and the plain metadata ``meta`` to ``path``
    atomically (a reader never sees a half-written file)."""
    state = {str(k): v.detach().cpu().contiguous() for k, v in state_dict.items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": state,
        "meta": json.dumps(meta, default=_plain),
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def _convert_hint(path: Path) -> str:
    new = path.with_name(f"{path.stem}.safe{path.suffix or '.pt'}")
    return (
        f"If you trust where the file came from, convert it once with "
        f"`diffsci convert-model {path} {new}` and use {new}"
    )


def load_model_file(path: str | Path) -> ModelFile:
    """Open a diffsci model file with ``torch.load(..., weights_only=True)``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    UnsafeModelFile
        The file holds pickled Python objects (it could run code; a file written before the
        tensor-only format, or a crafted one) or is not a diffsci model file; the message
        gives the conversion command for a file the user trusts.
    ValueError
        The file cannot be read at all (truncated, not a torch file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path} (run the train stage first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeModelFile(
            f"{path}: refused: the file holds pickled Python objects, which could run code "
            f"when opened ({first[:160]}); diffsci model files hold only tensors and plain "
            f"data. {_convert_hint(path)}"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise ValueError(f"{path}: cannot read the model file ({type(e).__name__}: {e})") from e
    return _from_payload(path, payload)


def _from_payload(path: Path, payload: Any) -> ModelFile:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UnsafeModelFile(
            f"{path}: refused: not a diffsci model file in the tensor-only format (written "
            f"before it, or by another program). {_convert_hint(path)}"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise UnsafeModelFile(
            f"{path}: model file format version {payload['format_version']} is newer than "
            f"this diffsci's ({FORMAT_VERSION}); upgrade diffsci"
        )
    return ModelFile(dict(payload["state_dict"]), json.loads(payload["meta"]))


def _numpy_globals() -> list[Any]:
    """The numpy constructors an old payload's metadata may need (numpy scalars and arrays of
    plain dtypes): data constructors only, so allowing them lets no code run."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    dtypes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}
    return [np.dtype, np.ndarray, core.multiarray._reconstruct, core.multiarray.scalar, *dtypes]


def _load_old(src: Path) -> Any:
    """An old payload, unpickled weights-only with numpy's plain constructors allowed."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(src)
        except Exception:  # noqa: BLE001 - only for the message
            unsafe = ["(unknown)"]
        raise UnsafeModelFile(
            f"{src}: not converted: it holds Python objects other than tensors, numbers, strings "
            f"and numpy arrays ({', '.join(unsafe[:8])}), which diffsci never unpickles. If you "
            "trust the file, unpickle it yourself (torch.load with weights_only off) and save "
            "its state_dict with diffsci.core.modelfile.save_model_file"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise ValueError(f"{src}: cannot read the model file ({type(e).__name__}: {e})") from e


def convert_model_file(src: str | Path, dst: str | Path) -> ModelFile:
    """Rewrite a model file written before the tensor-only format (a pickled dict of
    ``state_dict``, ``step``, ``provenance``, ``card``) as one in it.

    The old file is read weights-only too (numpy scalars and arrays of plain dtypes allowed), so
    converting never runs code either: a file that needs more is refused. ``src`` is never
    modified; ``dst`` must be a new path and is written atomically.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"model file not found: {src}")
    if dst.exists():
        raise FileExistsError(f"{dst}: exists; choose a new output path (nothing was written)")
    payload = _load_old(src)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        mf = _from_payload(src, payload)
    elif isinstance(payload, dict) and isinstance(payload.get("state_dict"), Mapping):
        meta = {k: v for k, v in payload.items() if k != "state_dict"}
        mf = ModelFile(dict(payload["state_dict"]), meta)
    else:
        raise ValueError(f"{src}: not a diffsci model (no state_dict mapping); not converted")
    save_model_file(dst, mf.state_dict, **mf.meta)
    return load_model_file(dst)

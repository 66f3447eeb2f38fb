"""Adding a domain needs its package, one entry-point line and a config, nothing else: a
throwaway domain, registered by an entry point this test writes (no file of the project is
changed), runs its whole chain through the ``diffsci`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffsci.core.modelfile import load_model_file, save_model_file

CORE_SCHEMA = (Path(__file__).resolve().parents[2] / "core" / "config.schema.yaml").as_uri()

TASK = '''
"""A throwaway domain: a diffusion model of a 2-D Gaussian vs the Gaussian fit as baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diffsci.core.denoisers import KarrasDenoiser, edm_loss
from diffsci.core.modelcard import require
from diffsci.core.metrics import energy_distance
from diffsci.core.networks import MLPDenoiser
from diffsci.core.samplers import sample
from diffsci.core.schedules import karras
from diffsci.core.task import DomainTask, EvalResult


class ToyTask(DomainTask):
    name = "toy"
    schema_path = Path(__file__).with_name("config.schema.yaml")

    def prepare(self, cfg, data_dir):
        g = np.random.default_rng(cfg["seed"])
        for split in ("train", "test"):
            x = g.normal([1.0, -2.0], [0.5, 0.2], size=(cfg["n"], 2)).astype(np.float32)
            np.save(Path(data_dir) / f"{split}.npy", x)

    def build_model(self, cfg):
        return KarrasDenoiser(MLPDenoiser(2, hidden=32, depth=1), sigma_data=1.0)

    def train_dataset(self, cfg, data_dir):
        return torch.from_numpy(np.load(Path(data_dir) / "train.npy"))

    def make_loss(self, cfg, data_dir):
        return lambda model, x0, rng: edm_loss(model, x0, rng)

    def baselines(self, cfg, data_dir, out_dir, rt):
        x = np.load(Path(data_dir) / "train.npy")
        fit = {"mean": x.mean(0).tolist(), "std": x.std(0).tolist()}
        (Path(out_dir) / "gaussian_fit.json").write_text(json.dumps(fit))

    def infer(self, cfg, model, data_dir, out_dir, rt):
        g = torch.Generator().manual_seed(cfg["seed"])
        x = sample(model, (cfg["n"], 2), karras(8, 0.01, 10.0), sampler="heun", generator=g)
        np.save(Path(out_dir) / "samples.npy", x.numpy())

    def model_card(self, cfg, data_dir):
        return {"serves": {"dim": 2}}

    def apply(self, cfg, model, card, inputs, out_dir, rt):
        for f in inputs:
            x = np.load(f)
            require("dim", x.shape[1], card["serves"]["dim"], source=str(f), fix="use 2-D points")
            g = torch.Generator().manual_seed(cfg["seed"])
            y = sample(model, x.shape, karras(8, 0.01, 10.0), sampler="heun", generator=g)
            np.save(Path(out_dir) / Path(f).name, y.numpy())

    def evaluate(self, cfg, paths, fig_dir):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        test = np.load(paths.data / "test.npy")
        ours = np.load(paths.predictions / "samples.npy")
        fit = json.loads((paths.baselines / "gaussian_fit.json").read_text())
        g = np.random.default_rng(1)
        base = g.normal(fit["mean"], fit["std"], size=test.shape)
        rows = {m: {"energy distance": float(energy_distance(x, test))}
                for m, x in (("diffusion", ours), ("Gaussian fit", base))}
        fig, ax = plt.subplots()
        ax.scatter(*ours.T, s=2)
        fig.savefig(fig_dir / "samples.png")
        plt.close(fig)
        return EvalResult(tables={"toy": rows}, lower_is_better=["energy distance"],
                          figures=["figures/samples.png"], summary={"n": cfg["n"]})
'''

SCHEMA = f"""
$schema: "https://json-schema.org/draft/2020-12/schema"
type: object
additionalProperties: false
required: [train]
properties:
  seed: {{$ref: "{CORE_SCHEMA}#/$defs/seed", default: 0}}
  device: {{$ref: "{CORE_SCHEMA}#/$defs/device", default: cpu}}
  n: {{type: integer, minimum: 8, default: 64}}
  train: {{$ref: "{CORE_SCHEMA}#/$defs/train"}}
"""


def _install(site: Path) -> None:
    pkg = site / "toydomain"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "task.py").write_text(TASK)
    (pkg / "config.schema.yaml").write_text(SCHEMA)
    dist = site / "toydomain-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toydomain\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[diffsci.tasks]\ntoy = toydomain.task:ToyTask\n")


@pytest.fixture()
def cli(tmp_path):
    site = tmp_path / "site"
    _install(site)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "diffsci.core.cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)

    return run


def test_a_registered_domain_runs_its_chain(cli, tmp_path):
    r = cli("domains")
    assert r.returncode == 0 and "toy" in r.stdout.split(), r.stderr
    config = tmp_path / "toy.yaml"
    config.write_text("n: 64\ntrain: {steps: 20, batch_size: 32, ckpt_every: 10}\n")
    work = tmp_path / "work"
    for stage in ("prepare", "train", "baselines", "infer", "evaluate", "report"):
        r = cli(stage, "--domain", "toy", "--config", str(config), "--workdir", str(work))
        assert r.returncode == 0, f"{stage}: {r.stderr[-2000:]}"
    m = json.loads((work / "metrics.json").read_text())
    assert set(m["tables"]["toy"]) == {"diffusion", "Gaussian fit"}
    assert m["provenance"]["config"]["train"]["lr"] == 0.0002  # the core schema's default
    assert (work / "figures" / "samples.png").is_file()
    assert (work / "baselines" / "gaussian_fit.json").is_file()
    assert sorted(p.name for p in (work / "tables").glob("*.csv")) == ["00_toy.csv", "summary.csv"]


def test_apply_checks_the_card_and_writes_beside_provenance(cli, tmp_path):
    import numpy as np

    config = tmp_path / "toy.yaml"
    config.write_text("n: 16\ntrain: {steps: 4, batch_size: 8}\n")
    work = tmp_path / "work"
    for stage in ("prepare", "train"):
        assert (
            cli(
                stage, "--domain", "toy", "--config", str(config), "--workdir", str(work)
            ).returncode
            == 0
        )
    card = json.loads((work / "model_card.json").read_text())
    assert card["serves"] == {"dim": 2} and card["data"]["source"] == "simulate"
    assert len(card["data"]["fingerprint"]) == 64
    np.save(tmp_path / "new.npy", np.zeros((5, 2), np.float32))
    out = tmp_path / "applied"
    model = str(work / "model.pt")
    r = cli(
        "apply",
        "--domain",
        "toy",
        "--model",
        model,
        "--input",
        str(tmp_path / "new.npy"),
        "--output",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert np.load(out / "new.npy").shape == (5, 2)
    prov = json.loads((out / "provenance.json").read_text())["apply"]
    assert prov["model_data_fingerprint"] == card["data"]["fingerprint"]
    # an input the model cannot serve: refused, naming file and mismatch, nothing written
    np.save(tmp_path / "bad.npy", np.zeros((5, 3), np.float32))
    r = cli(
        "apply",
        "--domain",
        "toy",
        "--model",
        model,
        "--input",
        str(tmp_path / "bad.npy"),
        "--output",
        str(tmp_path / "bad_out"),
    )
    assert r.returncode == 2 and "bad.npy: dim is 3 but the model serves 2" in r.stderr
    assert not (tmp_path / "bad_out").exists()
    # a model saved before model cards existed
    saved = load_model_file(model)
    del saved.meta["card"]
    save_model_file(tmp_path / "old.pt", saved.state_dict, **saved.meta)
    r = cli(
        "apply",
        "--domain",
        "toy",
        "--model",
        str(tmp_path / "old.pt"),
        "--input",
        str(tmp_path / "new.npy"),
        "--output",
        str(tmp_path / "old_out"),
    )
    assert r.returncode == 2 and "no model card" in r.stderr


def test_an_old_model_file_converts_to_the_same_outputs(cli, tmp_path):
    """A model file from before the tensor-only format (issue 25): refused by apply with the
    conversion command; converted, it gives outputs identical to the model it was made from."""
    import numpy as np
    import torch

    config = tmp_path / "toy.yaml"
    config.write_text("n: 16\ntrain: {steps: 4, batch_size: 8}\n")
    work = tmp_path / "work"
    for stage in ("prepare", "train"):
        r = cli(stage, "--domain", "toy", "--config", str(config), "--workdir", str(work))
        assert r.returncode == 0, r.stderr
    np.save(tmp_path / "new.npy", np.zeros((5, 2), np.float32))
    saved = load_model_file(work / "model.pt")
    old = tmp_path / "old.pt"  # the layout diffsci wrote before: a pickled dict
    torch.save({"state_dict": saved.state_dict, **saved.meta}, old)

    def apply(model: Path, out: str) -> subprocess.CompletedProcess:
        args = ["--model", str(model), "--input", str(tmp_path / "new.npy")]
        return cli("apply", "--domain", "toy", *args, "--output", str(tmp_path / out))

    r = apply(old, "old_out")
    assert r.returncode == 2 and f"convert-model {old} {tmp_path / 'old.safe.pt'}" in r.stderr
    assert not (tmp_path / "old_out").exists()
    r = cli("convert-model", str(old), str(tmp_path / "old.safe.pt"))
    assert r.returncode == 0, r.stderr
    assert apply(work / "model.pt", "a").returncode == 0
    assert apply(tmp_path / "old.safe.pt", "b").returncode == 0
    a, b = np.load(tmp_path / "a" / "new.npy"), np.load(tmp_path / "b" / "new.npy")
    assert np.array_equal(a, b) and np.isfinite(a).all()


def test_a_bad_config_names_the_key(cli, tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text("train: {steps: 0, batch_size: 4}\n")
    r = cli("prepare", "--domain", "toy", "--config", str(config), "--workdir", str(tmp_path))
    assert r.returncode == 2
    assert str(config) in r.stderr and "train/steps" in r.stderr


def test_an_unknown_domain_lists_the_registered_ones(cli, tmp_path):
    r = cli("prepare", "--domain", "nope", "--config", "x.yaml", "--workdir", str(tmp_path))
    assert r.returncode == 2 and "registered:" in r.stderr and "toy" in r.stderr


def test_a_domain_that_cannot_load_names_its_extra(tmp_path):
    site = tmp_path / "site"
    pkg = site / "brokendomain"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "task.py").write_text("import not_installed_dependency_xyz\n")
    dist = site / "brokendomain-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokendomain\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[diffsci.tasks]\nbroken = brokendomain.task:Task [broken]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    cmd = [sys.executable, "-m", "diffsci.core.cli", "prepare", "--domain", "broken"]
    r = subprocess.run(
        [*cmd, "--config", "x.yaml"], capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 2, r.stderr
    assert "not_installed_dependency_xyz" in r.stderr and "diffsci[broken]" in r.stderr

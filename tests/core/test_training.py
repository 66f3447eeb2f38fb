"""The training loop: learning, bit-identical resume, atomic checkpoints, signals, DDP."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from diffsci.core import training
from diffsci.core.training import (
    CheckpointError,
    TrainConfig,
    TrainingInterrupted,
    load_checkpoint,
    train,
    training_log,
)

SCRIPT = Path(__file__).with_name("_train_script.py")
# Loopback only for gloo/rendezvous: a sandbox whose hostname resolves to an unreachable
# address otherwise hangs the DDP test until the timeout (seen in CI).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}


def _mlp(seed: int = 0, hidden: int = 16, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, 4))


def _data(n: int = 40) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(123))


class _DictSet(Dataset):
    """Map-style dataset of dicts, to exercise ``default_collate``."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i]}


def _denoise_loss(model, batch, rng):
    x0 = batch["x"] if isinstance(batch, dict) else batch
    sigma = rng.rand((x0.shape[0], 1)) * 2 + 0.1
    x = x0 + sigma * rng.randn(x0.shape)
    d = model(torch.cat([x, sigma.log()], 1))
    return {"loss": ((d - x0) ** 2).mean(), "sigma_mean": sigma.mean()}


def _cfg(steps: int, **kw) -> TrainConfig:
    base = dict(batch_size=8, lr=1e-2, ema_decay=0.9, log_every=5, ckpt_every=3, progress=False)
    return TrainConfig(steps=steps, **{**base, **kw})


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------------------------


class _Pairs(Dataset):
    def __init__(self, n: int = 256) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_learns_logs_and_returns_ema(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    model.eval()  # the original mode is restored at the end

    def loss_fn(m, batch, rng):
        x, y = batch
        return ((m(x) - y) ** 2).mean()

    cfg = TrainConfig(
        steps=150,
        batch_size=32,
        lr=5e-2,
        log_every=10,
        ema_decay=0.9,
        ckpt_dir=str(tmp_path),
        progress=True,
    )
    res = train(model, loss_fn, _Pairs(), cfg)
    assert res.step == 150 and res.model is model and not model.training
    assert [r["step"] for r in res.history] == list(range(10, 151, 10))
    assert res.history[-1]["loss"] < 1e-3 < res.history[0]["loss"]
    for key in ("loss", "lr", "grad_norm", "samples_per_s", "elapsed"):
        assert key in res.history[0]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s) for s in lines] == res.history
    assert res.ema is not None and not res.ema.training
    assert not torch.equal(res.ema.weight, model.weight)
    torch.testing.assert_close(res.ema.weight, model.weight, atol=1e-2, rtol=0)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 150


@pytest.mark.parametrize("data_kind", ["tensor", "dataset"])
@pytest.mark.parametrize("how", ["clean", "crash"])
def test_resume_is_bit_identical(tmp_path, data_kind, how):
    def data():
        return _data() if data_kind == "tensor" else _DictSet(_data())

    # Dropout exercises the checkpointed torch RNG state; batches of 8 from 40 samples make
    # the run cross epochs; the crash leaves a mid-run checkpoint (step 9) and a log line past it.
    ref = train(_mlp(dropout=0.2), _denoise_loss, data(), _cfg(20))

    ck = tmp_path / "ck"
    if how == "clean":
        first = train(_mlp(dropout=0.2), _denoise_loss, data(), _cfg(10, ckpt_dir=str(ck)))
        assert first.step == 10
    else:
        calls = 0

        def crashing(model, batch, rng):
            nonlocal calls
            calls += 1
            if calls == 11:
                raise RuntimeError("boom")
            return _denoise_loss(model, batch, rng)

        with pytest.raises(RuntimeError, match="boom"):
            train(_mlp(dropout=0.2), crashing, data(), _cfg(20, ckpt_dir=str(ck)))
        assert torch.load(ck / "last.pt", weights_only=True)["step"] == 9
        assert json.loads((ck / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 10

    torch.manual_seed(999)  # a "fresh process": different global RNG and initial weights
    res = train(_mlp(seed=7, dropout=0.2), _denoise_loss, data(), _cfg(20, ckpt_dir=str(ck)))
    assert res.step == 20
    _assert_same(res.model, ref.model)
    _assert_same(res.ema, ref.ema)
    assert [r["step"] for r in res.history] == [5, 10, 15, 20]
    for a, b in zip(res.history, ref.history, strict=True):
        assert (a["loss"], a["grad_norm"], a["sigma_mean"], a["lr"]) == (
            b["loss"],
            b["grad_norm"],
            b["sigma_mean"],
            b["lr"],
        )
    lines = [json.loads(s) for s in (ck / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10, 15, 20]


def test_done_checkpoint_returns_immediately(tmp_path):
    first = train(_mlp(), _denoise_loss, _data(), _cfg(6, ckpt_dir=str(tmp_path)))

    def never(*a):
        raise AssertionError("loss_fn must not be called")

    res = train(_mlp(seed=3), never, _data(), _cfg(6, ckpt_dir=str(tmp_path)))
    assert res.step == 6
    _assert_same(res.model, first.model)
    _assert_same(res.ema, first.ema)
    assert [r["step"] for r in res.history] == [5, 6]


def test_fewer_steps_than_the_checkpoint_is_refused(tmp_path):
    """Issue 23, 4: steps=4 against a 6-step checkpoint returned the 6-step model, while the
    provenance said 4."""
    train(_mlp(), _denoise_loss, _data(), _cfg(6, ckpt_dir=str(tmp_path)))
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"holds 6 steps, more than steps=4.*steps: 6"):
        train(_mlp(), _denoise_loss, _data(), _cfg(4, ckpt_dir=str(tmp_path)))
    assert (tmp_path / "last.pt").read_bytes() == before


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    train(_mlp(), _denoise_loss, _data(), _cfg(3, ckpt_dir=str(tmp_path)))
    path = str(tmp_path / "last.pt")
    cases = [
        (_mlp(hidden=17), _data(), {}, r"fingerprint.*0\.weight \(16, 5\) vs \(17, 5\)"),
        (_mlp(), _data(), {"batch_size": 16}, "batch_size: checkpoint 8 vs config 16"),
        (_mlp(), _data(), {"seed": 1}, "seed: checkpoint 0 vs config 1"),
        (_mlp(), _data(41), {}, "dataset length: checkpoint 40 vs data 41"),
        (_mlp(), _data(), {"ema_decay": None}, "ema_decay"),
    ]
    for model, data, kw, msg in cases:
        with pytest.raises(CheckpointError, match=msg) as e:
            train(model, _denoise_loss, data, _cfg(6, ckpt_dir=str(tmp_path), **kw))
        assert path in str(e.value)
    with pytest.raises(CheckpointError, match="fingerprint") as e:
        load_checkpoint(path, _mlp(hidden=17))
    assert path in str(e.value)
    # A changed learning rate is allowed, with a warning.
    with pytest.warns(UserWarning, match="lr 0.01 -> 0.001"):
        train(_mlp(), _denoise_loss, _data(), _cfg(4, lr=1e-3, ckpt_dir=str(tmp_path)))


def test_resume_under_other_settings_is_a_clear_error(tmp_path):
    # Same architecture, different caller settings (e.g. the noise schedule): the weights
    # would load, so only the recorded settings can tell that the run would be mixed.
    a = {"model": {"sigma_max": 80.0, "modes": (8, 16)}, "seed": 0}
    train(_mlp(), _denoise_loss, _data(), _cfg(3, ckpt_dir=str(tmp_path)), settings=a)
    same = {"seed": 0, "model": {"modes": [8, 16], "sigma_max": 80.0}}  # JSON-equal
    res = train(_mlp(), _denoise_loss, _data(), _cfg(4, ckpt_dir=str(tmp_path)), settings=same)
    assert res.step == 4
    b = {"model": {"sigma_max": 1000.0, "modes": (8, 16)}, "seed": 0}
    with pytest.raises(CheckpointError, match=r"model\.sigma_max: checkpoint 80\.0 vs now 1000\.0"):
        train(_mlp(), _denoise_loss, _data(), _cfg(6, ckpt_dir=str(tmp_path)), settings=b)
    c = {"model": {"sigma_max": 80.0, "modes": (8, 16), "k": 3}, "seed": 0}
    with pytest.raises(CheckpointError, match=r"model\.k: checkpoint '<absent>' vs now 3"):
        train(_mlp(), _denoise_loss, _data(), _cfg(6, ckpt_dir=str(tmp_path)), settings=c)
    # a checkpoint without settings (older runs) cannot be checked: refused too
    other = tmp_path / "old"
    train(_mlp(), _denoise_loss, _data(), _cfg(3, ckpt_dir=str(other)))
    with pytest.raises(CheckpointError, match="records none"):
        train(_mlp(), _denoise_loss, _data(), _cfg(4, ckpt_dir=str(other)), settings=a)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    train(_mlp(), _denoise_loss, _data(), _cfg(3, ckpt_dir=str(tmp_path)))
    p = tmp_path / "last.pt"
    raw = p.read_bytes()
    p.write_bytes(
        {"garbage": b"\x00not a checkpoint" * 50, "truncated": raw[: len(raw) // 2], "empty": b""}[
            damage
        ]
    )
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as e:
        train(_mlp(), _denoise_loss, _data(), _cfg(6, ckpt_dir=str(tmp_path)))
    assert str(p) in str(e.value)
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as e:
        load_checkpoint(p, _mlp())
    assert str(p) in str(e.value)


def test_crash_while_writing_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save
    calls = 0

    def flaky_save(obj, f, *a, **kw):
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_save(obj, f, *a, **kw)
        f.write(b"half a checkpoint")  # garbage lands in the temp file, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(CheckpointError, match="last.pt: disk full .the previous last.pt is intact"):
        train(_mlp(), _denoise_loss, _data(), _cfg(9, ckpt_dir=str(tmp_path)))
    monkeypatch.undo()
    assert calls == 2
    assert sorted(f.name for f in tmp_path.iterdir()) == ["last.pt", "metrics.jsonl"]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 3
    load_checkpoint(tmp_path / "last.pt", _mlp())


def test_a_killed_writers_temporary_checkpoint_is_removed_on_resume(tmp_path):
    """Issue 23, 6: ``.last.pt.tmp-<pid>`` of a SIGKILLed writer stayed behind after a resume."""
    train(_mlp(), _denoise_loss, _data(), _cfg(3, ckpt_dir=str(tmp_path)))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / f".last.pt.tmp-{dead.pid}"
    live = tmp_path / f".last.pt.tmp-{os.getppid()}"  # a writer that is still alive
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"y")
    train(_mlp(), _denoise_loss, _data(), _cfg(6, ckpt_dir=str(tmp_path)))
    assert not stale.exists() and live.exists()


def test_load_checkpoint_ema_and_raw(tmp_path):
    res = train(_mlp(), _denoise_loss, _data(), _cfg(6, ckpt_dir=str(tmp_path)))
    _assert_same(load_checkpoint(tmp_path, _mlp(seed=5)), res.ema)
    _assert_same(load_checkpoint(tmp_path / "last.pt", _mlp(seed=5), ema=False), res.model)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt", _mlp())
    noema = tmp_path / "noema"
    res = train(_mlp(), _denoise_loss, _data(), _cfg(3, ema_decay=None, ckpt_dir=str(noema)))
    assert res.ema is None
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_checkpoint(noema, _mlp())


def test_nonfinite_loss_raises_naming_the_step(tmp_path):
    calls = 0

    def loss_fn(model, batch, rng):
        nonlocal calls
        calls += 1
        out = _denoise_loss(model, batch, rng)["loss"]
        return out * float("nan") if calls == 3 else out

    with pytest.raises(FloatingPointError, match="non-finite loss at step 3"):
        train(_mlp(), loss_fn, _data(), _cfg(10, ckpt_every=100, ckpt_dir=str(tmp_path)))
    assert not (tmp_path / "last.pt").exists()


def test_signal_saves_and_exits_tempfail(tmp_path):
    before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    calls = 0

    def loss_fn(model, batch, rng):
        nonlocal calls
        calls += 1
        if calls == 4:
            os.kill(os.getpid(), signal.SIGUSR1)
        return _denoise_loss(model, batch, rng)

    with pytest.raises(TrainingInterrupted) as e:
        train(_mlp(), loss_fn, _data(), _cfg(50, ckpt_dir=str(tmp_path)))
    assert isinstance(e.value, SystemExit) and e.value.code == 75 and e.value.step == 4
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 4
    assert (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)) == before


def test_sigint_checkpoints_and_exits_tempfail_like_sigterm(tmp_path):
    """Issue 23, 6: Ctrl-C ended training with a KeyboardInterrupt traceback and no checkpoint."""
    before = signal.getsignal(signal.SIGINT)
    calls = 0

    def loss_fn(model, batch, rng):
        nonlocal calls
        calls += 1
        if calls == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return _denoise_loss(model, batch, rng)

    with pytest.raises(TrainingInterrupted) as e:
        train(_mlp(), loss_fn, _data(), _cfg(50, ckpt_dir=str(tmp_path)))
    assert e.value.code == 75 and e.value.step == 5 and e.value.signum == signal.SIGINT
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 5
    assert signal.getsignal(signal.SIGINT) == before


def test_warmup_bf16_and_config_checks():
    cfg = _cfg(5, warmup_steps=4, log_every=1, bf16=True, grad_clip=None)
    res = train(_mlp(), _denoise_loss, _data(), cfg)
    assert [r["lr"] for r in res.history] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2])
    assert all(r["grad_norm"] > 0 for r in res.history)
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    with pytest.raises(ValueError, match="batch_size >= 1"):
        TrainConfig(steps=1, batch_size=0)
    with pytest.raises(ValueError, match="not divisible by the number of data-parallel ranks"):
        training._local_batch(10, 4)
    with pytest.raises(TypeError, match="scalar"):
        train(_mlp(), lambda m, b, r: m(torch.cat([b, b[:, :1]], 1)), _data(), _cfg(1))


def test_epoch_order_covers_each_sample_once_per_epoch():
    o = training._EpochOrder(10, 4, seed=0)
    idx = torch.cat([o.global_indices(s) for s in range(5)])  # 20 samples = 2 epochs
    for block in (idx[:10], idx[10:]):
        assert sorted(block.tolist()) == list(range(10))
    assert not torch.equal(idx[:10], idx[10:])
    assert not torch.equal(
        idx, torch.cat([training._EpochOrder(10, 4, 1).global_indices(s) for s in range(5)])
    )
    assert torch.equal(training._EpochOrder(10, 4, seed=0).global_indices(3), idx[12:16])


# --------------------------------------------------------------------------------------------
# Subprocesses: a real SIGTERM, and DDP under torchrun


def _load_script():
    spec = importlib.util.spec_from_file_location("_train_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_in_process(*args, **kw):
    """The script's ``run`` here, single-threaded like the subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _load_script().run(*args, **kw)
    finally:
        torch.set_num_threads(threads)


def _script(*args, launcher=(sys.executable,)) -> subprocess.Popen:
    cmd = [*launcher, str(SCRIPT), *map(str, args)]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"subprocess timed out after {timeout} s; stderr:\n{err[-3000:]}")
    assert p.returncode == 0, err[-3000:]
    return out


def test_sigterm_subprocess_then_resume_matches_uninterrupted(tmp_path):
    ck = tmp_path / "ck"
    p = _script("--steps", 60, "--ckpt-dir", ck, "--sleep", 0.05, "--out", tmp_path / "x.pt")
    try:
        ref = _run_in_process(60)  # meanwhile, the uninterrupted reference
        t0 = time.time()
        while not (ck / "last.pt").exists():
            assert p.poll() is None, p.communicate()[1][-3000:]
            assert time.time() - t0 < 60, "no checkpoint after 60 s"
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 75, err[-3000:]
    assert "interrupted by a signal" in err
    step = torch.load(ck / "last.pt", weights_only=True)["step"]
    assert 5 <= step < 60
    assert not (tmp_path / "x.pt").exists()

    res = _run_in_process(60, ckpt_dir=str(ck))  # a new model and train() call resumes
    assert res.step == ref.step == 60
    _assert_same(res.model, ref.model)
    _assert_same(res.ema, ref.ema)


def test_ddp_torchrun_matches_single_process(tmp_path):
    torchrun = (
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",
    )
    ck = tmp_path / "ck"
    # DDP for 6 steps (rank 0 checkpoints), then a second train() call resumes to 12.
    p = _script(
        "--steps", 6, "--then", 12, "--ckpt-dir", ck, "--out", tmp_path / "a.pt", launcher=torchrun
    )
    ref = _run_in_process(12)
    _finish(p)
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    assert a["step"] == ref.step == 12
    assert torch.load(ck / "last.pt", weights_only=True)["world_size"] == 2
    for part, module in (("model", ref.model), ("ema", ref.ema)):
        for k, v in module.state_dict().items():
            torch.testing.assert_close(a[part][k], v, atol=1e-6, rtol=0)
    assert [r["step"] for r in a["history"]] == list(range(1, 13))
    for ra, rb in zip(a["history"], ref.history, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)
        assert ra["sigma_mean"] == pytest.approx(rb["sigma_mean"], abs=1e-6)


def test_training_log_reports_the_whole_run_across_a_resume(tmp_path):
    """A run trained in two pieces: the log reports the last step of the whole run, its
    elapsed time and loss, and the resume event; a folder without a log gives None."""
    ck = tmp_path / "ck"
    train(_mlp(), _denoise_loss, _data(), _cfg(10, ckpt_dir=str(ck)))
    train(_mlp(), _denoise_loss, _data(), _cfg(20, ckpt_dir=str(ck)))
    rows = [json.loads(x) for x in (ck / "metrics.jsonl").read_text().splitlines()]
    log = training_log(ck)
    assert log["last_logged_step"] == 20 == rows[-1]["step"]
    assert log["train_seconds"] == rows[-1]["elapsed"] and log["final_loss"] == rows[-1]["loss"]
    assert [(e["event"], e["step"]) for e in log["events"]] == [("resumed", 10)]
    assert training_log(tmp_path / "missing") is None

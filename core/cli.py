"""Command-line interface: ``diffsci <command> ...``.

Errors from bad input are reported as one line naming the problem, with a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(DemoConfig)
        if getattr(args, f.name, None) is not None
    }
    metrics = run_demo(args.out, DemoConfig(**overrides), progress=not args.quiet)
    for k, v in metrics.items():
        print(f"{k}: {v}")
    return 0


def _stage(args: argparse.Namespace) -> int:
    from .stages import run_stage

    run_stage(
        args.command,
        domain=args.domain,
        config=args.config,
        workdir=args.workdir or f"results/{args.domain}",
        progress=not args.quiet,
    )
    return 0


def _apply(args: argparse.Namespace) -> int:
    from .stages import parse_overrides, run_apply

    run_apply(
        args.domain,
        model=args.model,
        inputs=args.input,
        output=args.output,
        device=args.device,
        progress=not args.quiet,
        sampling=parse_overrides(args.set),
    )
    return 0


def _convert_model(args: argparse.Namespace) -> int:
    from .modelfile import convert_model_file

    mf = convert_model_file(args.old, args.new)
    print(f"{args.new}: {len(mf.state_dict)} tensors, metadata {sorted(mf.meta)}")
    return 0


def _domains(args: argparse.Namespace) -> int:
    from .task import list_tasks

    print("\n".join(list_tasks()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffsci", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train and sample a 2-D Gaussian mixture (core demo)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--steps", type=int, help="training steps")
    d.add_argument("--batch-size", dest="batch_size", type=int)
    d.add_argument("--sampler", help="sampler name (see diffsci.core.samplers.SAMPLERS)")
    d.add_argument("--sample-steps", dest="sample_steps", type=int)
    d.add_argument("--seed", type=int)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_demo)
    from .stages import STAGES

    for stage in STAGES:
        sp = sub.add_parser(stage, help=f"run the {stage} stage of a domain's pipeline")
        sp.add_argument("--domain", required=True, help="registered domain (see `diffsci domains`)")
        sp.add_argument("--config", required=True, help="YAML config (validated by its schema)")
        sp.add_argument("--workdir", help="work directory (default results/<domain>)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
        sp.set_defaults(func=_stage)
    a = sub.add_parser("apply", help="apply a trained model to new files (checked by its card)")
    a.add_argument("--domain", required=True, help="registered domain (see `diffsci domains`)")
    a.add_argument("--model", required=True, help="trained model.pt (its card must be present)")
    a.add_argument("--input", required=True, nargs="+", help="input files (paths or globs)")
    a.add_argument("--output", required=True, help="output folder (written atomically)")
    a.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:N")
    a.add_argument(
        "--set",
        action="append",
        metavar="sampling.NAME=VALUE",
        help="change a sampling setting for this run (repeatable; e.g. sampling.samples=16, "
        "sampling.tile=256); the domain's schema checks it",
    )
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=_apply)
    c = sub.add_parser(
        "convert-model",
        help="rewrite a model file from before the tensor-only format (read weights-only: "
        "tensors, numbers, strings and numpy arrays, never code)",
    )
    c.add_argument("old", help="the old model file (left unchanged)")
    c.add_argument("new", help="the new model file (must not exist yet)")
    c.set_defaults(func=_convert_model)
    sub.add_parser("domains", help="list registered domains").set_defaults(func=_domains)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, OSError, ImportError) as e:
        print(f"diffsci {args.command}: error: {e}", file=sys.stderr)
        return 2
    except NotImplementedError as e:
        print(f"diffsci {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .training import CheckpointError  # torch-heavy: imported only here

        if not isinstance(e, CheckpointError):
            raise
        print(f"diffsci {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

# Generic pipeline shared by every domain:
#   prepare -> train -> baselines -> infer -> evaluate -> report
# Rules are parameterised by the {domain} wildcard and call the thin `diffsci` CLI. A domain
# with rules of its own ships them as `rules.smk` in its package; the Snakefile includes it.
# Figures and metric tables are flagged for Snakemake's own report:
#   snakemake --report results/report.html
# Checkpoints live in results/{domain}/checkpoints (a param, not an output), so a failed or
# preempted train job never loses them and a retry resumes.
import os
import shlex
import signal

import yaml
from snakemake.utils import validate

from diffsci.core.task import config_path, list_tasks, schema_path
from diffsci.core.workflow import domain_rules, signal_lead_check

DOMAINS = config.get("domains", list_tasks())
CAPTIONS = "../report"  # caption files, relative to this file

# Resources a rule or profile may set: Snakemake's own and those the SLURM executor plugin
# reads. Anything else (a typo such as `gpus` or `mem_gb`) would be silently ignored by the
# scheduler, so it is refused here with a message naming it.
KNOWN_RESOURCES = {
    "_cores", "_nodes", "threads", "tmpdir", "mem", "mem_mb", "mem_mib", "disk", "disk_mb",
    "disk_mib", "runtime", "gpu", "gpu_model", "gres", "cpus_per_gpu", "cpus_per_task",
    "tasks", "tasks_per_gpu", "tasks_per_node", "nodes", "mpi", "mem_mb_per_cpu",
    "slurm_partition", "slurm_account", "slurm_extra", "slurm_cluster", "cluster",
    "clusters", "constraint", "qos",
}  # fmt: skip


# (Helpers are lambdas: `snakemake --lint` flags `def` functions next to rules.)
_unknown = lambda names: sorted(set(names) - KNOWN_RESOURCES)
_settings = workflow.resource_settings
for _where, _names in [
    ("default-resources", (_settings.default_resources or {}).keys()),
    *((f"set-resources for rule {r!r}", m.keys()) for r, m in _settings.overwrite_resources.items()),
]:
    if _unknown(_names):
        raise ValueError(
            f"{_where}: unknown resource(s) {', '.join(map(repr, _unknown(_names)))} (check "
            "the spelling in your profile); known: "
            f"{', '.join(sorted(n for n in KNOWN_RESOURCES if not n.startswith('_')))}"
        )

# The rule's `gpu` resource as an int (0 when unset).
n_gpus = lambda resources: int(getattr(resources, "gpu", 0) or 0)
# `diffsci` for 0-1 GPUs; `torchrun --standalone --nproc-per-node=N` for N > 1 (DDP ranks).
train_launcher = lambda resources: (
    "diffsci"
    if n_gpus(resources) <= 1
    else f"torchrun --standalone --nproc-per-node={n_gpus(resources)} --no-python diffsci"
)
# With gpu >= 1, fail at once with a message naming the resource when torch sees fewer CUDA
# devices (a GPU profile on a machine without GPUs); `true` (nothing to check) for gpu=0.
_GPU_CHECK = (
    "import socket, sys, torch; n = torch.cuda.device_count(); "
    "sys.exit(0 if n >= {want} else f'diffsci train: resource gpu={want} (resources.gpu of "
    "rule train) but torch sees {{n}} CUDA device(s) on host {{socket.gethostname()}}; run "
    "on a GPU node, or set gpu: 0 for train in your profile (set-resources) to train on CPU')"
)
gpu_check = lambda resources: (
    f'python -c "{_GPU_CHECK.format(want=n_gpus(resources))}"' if n_gpus(resources) > 0 else "true"
)


# Inside a SLURM job step (the SLURM executor's inner snakemake, which srun starts to run one
# rule), SLURM's `--signal=USR1@T` reaches every process of the step. Snakemake has no USR1
# handler, so it would die at once, ending the step and killing training before its
# checkpoint is written. Ignored here, the signal is ignored by the rule's shell too (the
# disposition is inherited across exec), while training installs its own handler: it saves a
# checkpoint, exits 75, this snakemake reports the job failed and the retry resumes. SIGTERM
# (preemption, time limit, scancel) needs nothing: snakemake waits for running jobs on it.
if os.environ.get("SLURM_STEP_ID") is not None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


# Validate every config with its domain's schema before any job runs.
for _d in DOMAINS:
    with open(config_path(_d, config)) as _f:
        _cfg = yaml.safe_load(_f)
    validate(_cfg, str(schema_path(_d)))


wildcard_constraints:
    domain="|".join(DOMAINS),


rule prepare:
    input:
        config=lambda wc: config_path(wc.domain, config),
    output:
        directory("results/{domain}/data"),
    log:
        "logs/{domain}/prepare.log",
    params:
        workdir=lambda wc, output: os.path.dirname(output[0]),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "diffsci prepare --domain {wildcards.domain} --config {input.config} "
        "--workdir {params.workdir} --quiet > {log} 2>&1"


rule train:
    input:
        data="results/{domain}/data",
        config=lambda wc: config_path(wc.domain, config),
    output:
        "results/{domain}/model.pt",
    log:
        "logs/{domain}/train.log",
    benchmark:
        "benchmarks/snakemake/{domain}/train.tsv"
    params:
        workdir=lambda wc, output: os.path.dirname(output[0]),
        # torchrun when the rule's `gpu` resource is > 1 (set in the slurm profile).
        launcher=lambda wc, resources: train_launcher(resources),
        gpu_check=lambda wc, resources: gpu_check(resources),
        # refuses a `--signal=USR1@T` that would fire as the job starts (runtime <= T)
        signal_check=lambda wc, resources: signal_lead_check(resources),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=8000,
        runtime=lambda wc, attempt: 120 * attempt,
    shell:
        # SLURM's --signal=USR1 reaches every process of the job step: the shell ignores it
        # (see the SIGUSR1 note at the top), training checkpoints at the next step boundary and
        # exits 75, and Snakemake's retry resumes. Snakemake discards a failed job's log
        # before the retry; the run's interruptions and resumes stay in
        # results/{domain}/checkpoints/events.jsonl.
        "trap '' USR1; "
        'echo "== train started $(date -Is) on $(hostname)'
        ' (SLURM job ${{SLURM_JOB_ID:-none}})" > {log}; '
        "{params.gpu_check} 2>&1 | tee -a {log} >&2 && "
        "{params.launcher} train --domain {wildcards.domain} --config {input.config} "
        "--workdir {params.workdir} --quiet >> {log} 2>&1"


rule baselines:
    input:
        data="results/{domain}/data",
        config=lambda wc: config_path(wc.domain, config),
    output:
        directory("results/{domain}/baselines"),
    log:
        "logs/{domain}/baselines.log",
    benchmark:
        "benchmarks/snakemake/{domain}/baselines.tsv"
    params:
        workdir=lambda wc, output: os.path.dirname(output[0]),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=4000,
        runtime=lambda wc, attempt: 60 * attempt,
    shell:
        "diffsci baselines --domain {wildcards.domain} --config {input.config} "
        "--workdir {params.workdir} --quiet > {log} 2>&1"


rule infer:
    input:
        model="results/{domain}/model.pt",
        data="results/{domain}/data",
        config=lambda wc: config_path(wc.domain, config),
    output:
        directory("results/{domain}/predictions"),
    log:
        "logs/{domain}/infer.log",
    benchmark:
        "benchmarks/snakemake/{domain}/infer.tsv"
    params:
        workdir=lambda wc, output: os.path.dirname(output[0]),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=8000,
        runtime=lambda wc, attempt: 60 * attempt,
    shell:
        "diffsci infer --domain {wildcards.domain} --config {input.config} "
        "--workdir {params.workdir} --quiet > {log} 2>&1"


rule evaluate:
    input:
        predictions="results/{domain}/predictions",
        baselines="results/{domain}/baselines",
        data="results/{domain}/data",
        config=lambda wc: config_path(wc.domain, config),
    output:
        metrics="results/{domain}/metrics.json",
        figures=report(
            directory("results/{domain}/figures"),
            patterns=["{name}.png"],
            caption=f"{CAPTIONS}/figures.rst",
            category="{domain}",
            subcategory="figures",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/{domain}/evaluate.log",
    params:
        workdir=lambda wc, output: os.path.dirname(output[0]),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "diffsci evaluate --domain {wildcards.domain} --config {input.config} "
        "--workdir {params.workdir} --quiet > {log} 2>&1"


rule report:
    input:
        metrics="results/{domain}/metrics.json",
        config=lambda wc: config_path(wc.domain, config),
    output:
        report(
            directory("results/{domain}/tables"),
            patterns=["{name}.csv"],
            caption=f"{CAPTIONS}/tables.rst",
            category="{domain}",
            subcategory="metric tables",
            labels={"table": "{name}"},
        ),
    log:
        "logs/{domain}/report.log",
    params:
        workdir=lambda wc, output: os.path.dirname(output[0]),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "diffsci report --domain {wildcards.domain} --config {input.config} "
        "--workdir {params.workdir} --quiet > {log} 2>&1"


# A trained model applied to new files (checked against its model card), optionally with
# sampling settings changed for this run:
#   snakemake results/pde/applied --config pde_apply='[my/file1.h5, my/file2.h5]'
#   snakemake results/hyperspectral/applied --config hyperspectral_apply='[a.hdr]' \
#       hyperspectral_apply_set='[sampling.super_resolution=2]'
rule apply:
    input:
        model="results/{domain}/model.pt",
        files=lambda wc: config.get(f"{wc.domain}_apply", []),
    output:
        directory("results/{domain}/applied"),
    params:
        sets=lambda wc: " ".join(
            f"--set {shlex.quote(str(s))}" for s in config.get(f"{wc.domain}_apply_set", [])
        ),
    log:
        "logs/{domain}/apply.log",
    conda:
        "../../environment.yml"
    resources:
        mem_mb=8000,
        runtime=lambda wc, attempt: 60 * attempt,
    shell:
        "diffsci apply --domain {wildcards.domain} --model {input.model} "
        "--input {input.files:q} --output {output} {params.sets} --quiet > {log} 2>&1"


# A domain's own rules (`rules.smk` in its package), when it has any.
for _smk in filter(None, map(domain_rules, DOMAINS)):

    include: _smk


# `snakemake <domain>` runs one domain's whole pipeline.
for _d in DOMAINS:

    rule:
        name:
            _d
        input:
            f"results/{_d}/tables",
        default_target: False

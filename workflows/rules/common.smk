# Generic pipeline shared by every domain: prepare -> train -> infer -> evaluate -> report.
# Rules are parameterised by the {domain} wildcard and call the thin `diffsci` CLI. A domain's
# own .smk only adds its extra rules and may list extra evaluate inputs in EXTRA_EVAL_INPUTS.
# Checkpoints live in results/{domain}/checkpoints (a param, not an output), so a failed or
# preempted train job never loses them and a retry resumes.
import os

import yaml
from snakemake.utils import validate

from diffsci.core.task import config_path, list_tasks, schema_path

DOMAINS = config.get("domains", list_tasks())
EXTRA_EVAL_INPUTS = {}


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
    conda:
        "../../environment.yml"
    resources:
        mem_mb=8000,
        runtime=lambda wc, attempt: 120 * attempt,
    shell:
        "diffsci train --domain {wildcards.domain} --config {input.config} "
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
        data="results/{domain}/data",
        config=lambda wc: config_path(wc.domain, config),
        extra=lambda wc: EXTRA_EVAL_INPUTS.get(wc.domain, []),
    output:
        metrics="results/{domain}/metrics.json",
        figures=directory("results/{domain}/figures"),
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
        figures="results/{domain}/figures",
        config=lambda wc: config_path(wc.domain, config),
    output:
        "results/{domain}/report.html",
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


# `snakemake <domain>` runs one domain's whole pipeline.
for _d in DOMAINS:

    rule:
        name:
            _d
        input:
            f"results/{_d}/report.html",
        default_target: False

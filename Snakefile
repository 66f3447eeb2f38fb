# diffsci workflows. `snakemake --cores all` runs every registered domain's tiny pipeline
# (plus the core demo); `snakemake pde` runs one domain. Configs: workflows/config/<domain>.yaml,
# override with `--config pde_config=workflows/config/pde_gpu.yaml`. The report a person opens:
# `snakemake --report results/report.html` (figures and metric tables of every domain).
import os


include: "workflows/rules/common.smk"
include: "workflows/rules/core.smk"


report: "workflows/report/workflow.rst"


rule all:
    default_target: True
    input:
        rules.core_demo.output,
        expand("results/{domain}/tables", domain=DOMAINS),

# diffsci workflows. `snakemake --cores all` runs every registered domain's tiny pipeline
# (plus the core demo); `snakemake pde` runs one domain. Configs: workflows/config/<domain>.yaml,
# override with `--config pde_config=workflows/config/pde_gpu.yaml`.
import os


include: "workflows/rules/common.smk"
include: "workflows/rules/core.smk"
include: "workflows/rules/pde.smk"


rule all:
    default_target: True
    input:
        rules.core_demo.output,
        expand("results/{domain}/report.html", domain=DOMAINS),

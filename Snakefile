# diffsci workflows. `snakemake --cores all` runs every registered pipeline on tiny CPU data.
import os


include: "workflows/rules/core.smk"


rule all:
    default_target: True
    input:
        rules.core_demo.output,

# PDE extras: the FNO baseline, trained on the same data for the same number of steps.
EXTRA_EVAL_INPUTS["pde"] = ["results/pde/baselines"]


rule pde_baselines:
    input:
        data="results/pde/data",
        config=config_path("pde", config),
    output:
        directory("results/pde/baselines"),
    log:
        "logs/pde/baselines.log",
    benchmark:
        "benchmarks/snakemake/pde/baselines.tsv"
    params:
        workdir=lambda wc, output: os.path.dirname(output[0]),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=4000,
        runtime=lambda wc, attempt: 60 * attempt,
    shell:
        "python -m diffsci.domains.pde.baselines --config {input.config} "
        "--workdir {params.workdir} --quiet > {log} 2>&1"

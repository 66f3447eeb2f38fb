# The core's own demo (before any domain lands): learn a 2-D Gaussian mixture and plot it.
rule core_demo:
    output:
        metrics="results/core_demo/metrics.json",
        samples="results/core_demo/samples.h5",
        figure=report(
            "results/core_demo/demo.png",
            caption="../report/core_demo.rst",
            category="core demo",
        ),
    log:
        "logs/core_demo.log",
    benchmark:
        "benchmarks/snakemake/core_demo.tsv"
    params:
        out=lambda wildcards, output: os.path.dirname(output.metrics),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "diffsci demo --out {params.out} --quiet > {log} 2>&1"

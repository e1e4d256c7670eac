# Stage 5: the environment snapshot, once per MAPS.


rule environment:
    output:
        txt="{maps}/env/environment.txt",
        system="{maps}/env/system.json",
    log:
        "logs/{maps}/environment.log",
    conda:
        "../envs/snakemaps.yaml"
    script:
        "../scripts/environment.py"

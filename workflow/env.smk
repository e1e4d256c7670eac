# Stage 5: the environment snapshot, once per MAPS. Every later run compares
# the running environment with the recorded one and warns about differences.

warn_if_environment_changed(MAPS_DIR)


rule environment:
    input:
        # The project's lock file(s), copied into env/; editing one reruns the step.
        lock=project_lock_files,
    output:
        txt="{maps}/env/environment.txt",
        system="{maps}/env/system.json",
    log:
        "logs/{maps}/environment.log",
    conda:
        "../envs/snakemaps.yaml"
    script:
        "../scripts/environment.py"

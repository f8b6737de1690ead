# Inference: every tissue window of a slide through the model -> windows.csv + windows.json,
# then one CSV per patient. Batch size, device and loader workers are runtime knobs: they
# reach the command through threads and resource-taking params, which never trigger reruns.
rule infer:
    input:
        slide=get_slide,
        plan=rules.select_level.output.level,
        mask=rules.select_level.output.mask,
        model=MODEL_FILES,
    output:
        csv="<results>/{patient}/{slide}/windows.csv",
        meta="<results>/{patient}/{slide}/windows.json",
    log:
        "<logs>/infer/{patient}/{slide}.log",
    benchmark:
        "<benchmarks>/infer/{patient}/{slide}.tsv"
    group:
        JOB_GROUP["infer"]
    conda:
        "../envs/wsiproc.yaml"
    threads: config["loader"]["workers"]
    resources:
        **GPU_JOB_RESOURCES,
        **GPU_CLAIM[INFER_GPUS],
        mem_mb=attempt_scaled(INFER_MEM_MB),
        runtime=attempt_scaled(120),
    params:
        # The window.* flags, --model, --precision, --allow-mpp-mismatch (common.smk).
        args=INFER_ARGS,
        batch_size=get_batch_size,
        device=get_device,
        version=WSIPROC_VERSION,
    shell:
        r"""
        wsiproc infer {input.slide:q} \
            --out {output.csv:q} \
            --plan {input.plan:q} \
            --mask {input.mask:q} \
            {params.args} \
            --workers {threads} \
            --threads {threads} \
            --batch-size {params.batch_size} \
            --device {params.device} \
            --patient {wildcards.patient} \
            --slide-id {wildcards.slide} \
            --quiet \
            >{log:q} 2>&1
        """


# The patient's slides come from the sheet, not one argument each (a command line holds at most
# 128 KiB). The windows.csv inputs set the DAG and rerun it when the patient gains a slide; the
# sheet is a param, not an input, so a slide added to another patient reruns only that one.
rule patient_csv:
    input:
        csv=get_patient_windows,
    output:
        csv="<results>/{patient}/{patient}.csv",
    log:
        "<logs>/patient_csv/{patient}.log",
    benchmark:
        "<benchmarks>/patient_csv/{patient}.tsv"
    conda:
        "../envs/wsiproc.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        sheet=get_sheet,
        results=get_outdir,
        version=WSIPROC_VERSION,
    shell:
        r"""
        wsiproc patient_csv \
            --sheet {params.sheet:q} \
            --results {params.results:q} \
            --patient {wildcards.patient:q} \
            --out {output.csv:q} \
            >{log:q} 2>&1
        """

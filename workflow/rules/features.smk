# Features for MIL: every tissue patch of a slide through the encoder -> features.h5 (TRIDENT's
# layout) + features.json (the run record), and the configured exports beside them; then the
# cohort's features.tsv. Gated by the level stage's tissue mask, at the encoder's own
# resolution (its sidecar's mpp unless features.mpp is set), so no heatmap model is needed.
if FEATURES_BATCHED:

    # features.slides_per_job > 1: one job per batch of slides loads the encoder once and,
    # per slide, selects its level (the tissue mask, as select_level does) and embeds it
    # through `wsiproc features`, into the slide's .staged/. A slide's error is recorded and
    # the others go on (the job fails only when the encoder does not load). No select_level
    # input: a slide whose level stage fails would hold back its whole batch.
    rule features_batch:
        input:
            slides=get_features_batch_slides,
            function=LEVEL_FUNCTION_FILES,
            encoder=FEATURES_ENCODER_FILES,
        output:
            record="<results>/.batches/features/{batch}.tsv",
        log:
            "<logs>/features_batch/{batch}.log",
        benchmark:
            "<benchmarks>/features_batch/{batch}.tsv"
        wildcard_constraints:
            batch="b[0-9]+",
        conda:
            "../envs/wsiproc.yaml"
        threads: config["loader"]["workers"]
        resources:
            **FEATURES_JOB_RESOURCES,
            **GPU_CLAIM[FEATURES_GPUS],
            mem_mb=attempt_scaled(FEATURES_MEM_MB),
            runtime=attempt_scaled(120 * FEATURES_PER_JOB),
        params:
            slides=get_features_batch_items,
            # --encoder, the features.* options, --min-tissue, --fallback-mpp, --export
            # (common.smk).
            args=FEATURES_ARGS,
            batch_size=get_features_batch_size,
            device=get_features_device,
            version=WSIPROC_VERSION,
        shell:
            r"""
            wsiproc batch \
                --record {output.record:q} \
                {params.slides} \
                features \
                -- \
                {params.args} \
                --workers {threads} \
                --threads {threads} \
                --batch-size {params.batch_size} \
                --device {params.device} \
                --quiet \
                >{log:q} 2>&1
            """

    # Per slide, the same outputs as without batches (so every later rule is unchanged): the
    # staged files linked into place, or the slide's recorded error as this job's failure.
    # Cheap: it runs where Snakemake runs, never as a cluster job.
    localrules:
        features,

    rule features:
        input:
            record=get_features_record,
            # After the level stage, as without batches: the report's order of stages holds,
            # and a slide whose level stage failed is "not run" here too.
            mask=rules.select_level.output.mask,
        output:
            h5="<results>/{patient}/{slide}/features.h5",
            meta="<results>/{patient}/{slide}/features.json",
            exports=FEATURES_EXPORT_OUTPUTS,
        log:
            "<logs>/features/{patient}/{slide}.log",
        benchmark:
            "<benchmarks>/features/{patient}/{slide}.tsv"
        conda:
            "../envs/wsiproc.yaml"
        threads: 1
        resources:
            mem_mb=500,
            runtime=5,
        params:
            staged=get_staged_dir,
            final=get_slide_dir,
            version=WSIPROC_VERSION,
        shell:
            r"""
            wsiproc batch-finish \
                --record {input.record:q} \
                --slide {wildcards.slide} \
                --staged {params.staged:q} \
                --final {params.final:q} \
                {output.h5:q} \
                {output.exports:q} \
                {output.meta:q} \
                >{log:q} 2>&1
            """

else:

    rule features:
        input:
            slide=get_slide,
            mask=rules.select_level.output.mask,
            encoder=FEATURES_ENCODER_FILES,
        output:
            h5="<results>/{patient}/{slide}/features.h5",
            meta="<results>/{patient}/{slide}/features.json",
            exports=FEATURES_EXPORT_OUTPUTS,
        log:
            "<logs>/features/{patient}/{slide}.log",
        benchmark:
            "<benchmarks>/features/{patient}/{slide}.tsv"
        conda:
            "../envs/wsiproc.yaml"
        threads: config["loader"]["workers"]
        resources:
            **FEATURES_JOB_RESOURCES,
            **GPU_CLAIM[FEATURES_GPUS],
            mem_mb=attempt_scaled(FEATURES_MEM_MB),
            runtime=attempt_scaled(120),
        params:
            # --encoder, the features.* options, --min-tissue, --fallback-mpp, --export
            # (common.smk).
            args=FEATURES_ARGS,
            slide_mpp=get_slide_mpp,
            batch_size=get_features_batch_size,
            device=get_features_device,
            version=WSIPROC_VERSION,
        shell:
            r"""
            wsiproc features {input.slide:q} \
                --out {output.h5:q} \
                --mask {input.mask:q} \
                {params.args} \
                {params.slide_mpp} \
                --workers {threads} \
                --threads {threads} \
                --batch-size {params.batch_size} \
                --device {params.device} \
                --patient {wildcards.patient} \
                --slide-id {wildcards.slide} \
                --quiet \
                >{log:q} 2>&1
            """


# Every slide of the sheet with N, D, encoder, throughput and status (ok, failed, not run),
# from the files on disk; after a failed run the onerror handler writes it too.
rule features_table:
    input:
        meta=get_all_features,
        sheet=get_sheet,
    output:
        tsv="<results>/features.tsv",
    log:
        "<logs>/features_table/features_table.log",
    benchmark:
        "<benchmarks>/features_table/features_table.tsv"
    conda:
        "../envs/wsiproc.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        results=get_outdir,
        logs=get_logdir,
        version=WSIPROC_VERSION,
    shell:
        r"""
        wsiproc features-table \
            --sheet {input.sheet:q} \
            --results {params.results:q} \
            --logs {params.logs:q} \
            --out {output.tsv:q} \
            >{log:q} 2>&1
        """


# Features of every slide and the cohort table, without heatmaps, QC or the report.
rule features_all:
    input:
        get_features_outputs(),

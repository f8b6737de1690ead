# Features for MIL: every tissue patch of a slide through the encoder -> features.h5 (TRIDENT's
# layout) + features.json (the run record), and the configured exports beside them; then the
# cohort's features.tsv. Gated by the level stage's tissue mask, at the encoder's own
# resolution (its sidecar's mpp unless features.mpp is set), so no heatmap model is needed.
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
        # --encoder, the features.* options, --min-tissue, --fallback-mpp, --export (common.smk).
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

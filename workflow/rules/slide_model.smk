# Slide model (attention MIL): features.h5 -> slide.json (prediction) + attention.csv and its
# record (windows.csv's contract, one column per attention head) -> attention heatmaps; then
# the cohort's predictions.tsv and patient_predictions.tsv. Contract: docs/slide-models.md.
if SLIDE_MODEL_BATCHED:

    # slide_model.slides_per_job > 1: one job per batch of slides loads the slide model once
    # and predicts each slide through `wsiproc slide-predict`, from the features its batch
    # staged, into the slide's .staged/. Slides whose features failed are skipped, a slide's
    # error is recorded and the others go on.
    rule slide_predict_batch:
        input:
            features=get_slide_model_batch_features,
            model=SLIDE_MODEL_FILES,
        output:
            record="<results>/.batches/slide_predict/{batch}.tsv",
        log:
            "<logs>/slide_predict_batch/{batch}.log",
        benchmark:
            "<benchmarks>/slide_predict_batch/{batch}.tsv"
        wildcard_constraints:
            batch="b[0-9]+",
        conda:
            "../envs/wsiproc.yaml"
        threads: 1
        resources:
            mem_mb=attempt_scaled(config["slide_model"]["mem_mb"]),
            runtime=attempt_scaled(30 * SLIDE_MODEL_PER_JOB),
        params:
            slides=get_slide_model_batch_items,
            skip=get_skip_failed_flags,
            # --model, --attention-threshold, --allow-encoder-mismatch (common.smk).
            args=SLIDE_PREDICT_ARGS,
            device=get_slide_model_device,
            version=WSIPROC_VERSION,
        shell:
            r"""
            wsiproc batch \
                --record {output.record:q} \
                {params.skip} \
                {params.slides} \
                slide-predict \
                -- \
                {params.args} \
                --device {params.device} \
                >{log:q} 2>&1
            """

    # Per slide, the same outputs as without batches: the staged files linked into place, or
    # the slide's recorded error as this job's failure; it runs where Snakemake runs.
    localrules:
        slide_predict,

    rule slide_predict:
        input:
            record=get_slide_model_record,
            h5=rules.features.output.h5,
        output:
            csv="<results>/{patient}/{slide}/attention.csv",
            meta="<results>/{patient}/{slide}/attention.json",
            json="<results>/{patient}/{slide}/slide.json",
        log:
            "<logs>/slide_predict/{patient}/{slide}.log",
        benchmark:
            "<benchmarks>/slide_predict/{patient}/{slide}.tsv"
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
                {output.csv:q} \
                {output.meta:q} \
                {output.json:q} \
                >{log:q} 2>&1
            """

else:

    rule slide_predict:
        input:
            h5=rules.features.output.h5,
            model=SLIDE_MODEL_FILES,
        output:
            csv="<results>/{patient}/{slide}/attention.csv",
            meta="<results>/{patient}/{slide}/attention.json",
            json="<results>/{patient}/{slide}/slide.json",
        log:
            "<logs>/slide_predict/{patient}/{slide}.log",
        benchmark:
            "<benchmarks>/slide_predict/{patient}/{slide}.tsv"
        conda:
            "../envs/wsiproc.yaml"
        threads: 1
        resources:
            mem_mb=attempt_scaled(config["slide_model"]["mem_mb"]),
            runtime=attempt_scaled(30),
        params:
            # --model, --attention-threshold, --allow-encoder-mismatch (common.smk).
            args=SLIDE_PREDICT_ARGS,
            device=get_slide_model_device,
            version=WSIPROC_VERSION,
        shell:
            r"""
            wsiproc slide-predict {input.h5:q} \
                {params.args} \
                --out {output.json:q} \
                --attention-out {output.csv:q} \
                --patient {wildcards.patient} \
                --slide-id {wildcards.slide} \
                --device {params.device} \
                >{log:q} 2>&1
            """


# Attention heatmaps: the float TIFF keeps every head's raw attention; the colour TIFF shows
# one head by per-slide rank (slide_model.color_scale).
rule attention_heatmap:
    input:
        csv=rules.slide_predict.output.csv,
        meta=rules.slide_predict.output.meta,
    output:
        tif="<results>/{patient}/{slide}/attention.tif",
        rgb="<results>/{patient}/{slide}/attention_rgb.tif",
        geojson="<results>/{patient}/{slide}/attention.geojson",
        thumbnail="<results>/{patient}/{slide}/attention.png",
    log:
        "<logs>/attention_heatmap/{patient}/{slide}.log",
    benchmark:
        "<benchmarks>/attention_heatmap/{patient}/{slide}.tsv"
    conda:
        "../envs/wsiproc.yaml"
    threads: 1
    resources:
        mem_mb=attempt_scaled(2000),
        runtime=attempt_scaled(30),
    params:
        # --colormap, --color-scale, --output (common.smk).
        args=ATTENTION_HEATMAP_ARGS,
        version=WSIPROC_VERSION,
    shell:
        r"""
        wsiproc heatmap {input.csv:q} \
            --meta {input.meta:q} \
            --out {output.tif:q} \
            --rgb-out {output.rgb:q} \
            --geojson {output.geojson:q} \
            --thumbnail-out {output.thumbnail:q} \
            {params.args} \
            >{log:q} 2>&1
        """


# Every slide's prediction and status (ok, flagged, failed, not run) and the mean of each
# patient's slide probabilities; after a failed run the onerror handler writes them too.
rule predictions:
    input:
        slides=get_all_slide_predictions,
        sheet=get_sheet,
    output:
        tsv="<results>/predictions.tsv",
        patients="<results>/patient_predictions.tsv",
    log:
        "<logs>/predictions/predictions.log",
    benchmark:
        "<benchmarks>/predictions/predictions.tsv"
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
        wsiproc predictions \
            --sheet {input.sheet:q} \
            --results {params.results:q} \
            --logs {params.logs:q} \
            --out {output.tsv:q} \
            --patients-out {output.patients:q} \
            >{log:q} 2>&1
        """

# Slide model (attention MIL): features.h5 -> slide.json (prediction) + attention.csv and its
# record (windows.csv's contract, one column per attention head) -> attention heatmaps; then
# the cohort's predictions.tsv and patient_predictions.tsv. Contract: docs/slide-models.md.
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

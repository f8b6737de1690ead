# Quality control: per-slide metrics and HTML page, then the cohort report. The qc.*
# thresholds are params of `qc` only, so changing them reruns qc and report, nothing else.
rule qc:
    input:
        slide=get_slide,
        level=rules.select_level.output.level,
        thumbnail=rules.select_level.output.thumbnail,
        mask=rules.select_level.output.mask,
        csv=rules.infer.output.csv,
        meta=rules.infer.output.meta,
        benchmark=rules.infer.benchmark,
        # Optional: the records of the features and slide-model stages, when they run.
        features=rules.features.output.meta if FEATURES_ON else [],
        prediction=(
            rules.slide_predict.output.json if config["slide_model"]["enabled"] else []
        ),
    output:
        json="<results>/{patient}/{slide}/qc.json",
        html=report(
            "<results>/{patient}/{slide}/qc.html",
            caption="../report/qc.rst",
            category="3. Quality control",
            subcategory="{patient}",
            labels={"slide": "{slide}", "figure": "QC page"},
        ),
    log:
        "<logs>/qc/{patient}/{slide}.log",
    benchmark:
        "<benchmarks>/qc/{patient}/{slide}.tsv"
    group:
        JOB_GROUP["qc"]
    conda:
        "../envs/wsiproc.yaml"
    threads: 1
    resources:
        mem_mb=attempt_scaled(2000),
        runtime=attempt_scaled(20),
    params:
        # --blur-threshold, --pen-threshold, --min-tissue-percent (common.smk).
        args=QC_ARGS,
        stage_records=qc_stage_records(),
        version=WSIPROC_VERSION,
    shell:
        r"""
        wsiproc qc {input.slide:q} \
            --level-json {input.level:q} \
            --windows {input.csv:q} \
            --meta {input.meta:q} \
            --thumbnail {input.thumbnail:q} \
            --mask {input.mask:q} \
            --benchmark {input.benchmark:q} \
            --out {output.json:q} \
            --html {output.html:q} \
            {params.args} \
            {params.stage_records} \
            >{log:q} 2>&1
        """


# Every slide of the sheet, from the files on disk (finished, failed or not run). On success
# it runs last (after every qc.json); after a failure the onerror handler runs the same command.
rule report:
    input:
        qc=get_all_qc,
        heatmaps=get_all_heatmaps,
        features=get_all_features_if_enabled,
        predictions=get_all_predictions_if_enabled,
        attention=get_all_attention_thumbnails,
        sheet=get_sheet,
    output:
        html=report(
            "<results>/report.html",
            caption="../report/report.rst",
            category="4. Cohort",
            labels={"figure": "cohort QC report"},
        ),
        tsv="<results>/summary.tsv",
    log:
        "<logs>/report/report.log",
    benchmark:
        "<benchmarks>/report/report.tsv"
    conda:
        "../envs/wsiproc.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        results=get_outdir,
        logs=get_logdir,
        stages=" ".join(COHORT_STAGE_FLAGS),
        version=WSIPROC_VERSION,
    shell:
        r"""
        wsiproc report \
            --sheet {input.sheet:q} \
            --results {params.results:q} \
            --logs {params.logs:q} \
            {params.stages} \
            --out-html {output.html:q} \
            --out-tsv {output.tsv:q} \
            >{log:q} 2>&1
        """

# Level selection: slide metadata + level spec -> level.json, thumbnail and tissue mask.
# Window, model and QC settings are deliberately not params here, so changing them never
# reruns this rule (and never cascades from here into inference). The one exception is
# window.on_read_error: under skip an undecodable thumbnail must not stop the slide here
# (infer, which reruns on that change anyway, then processes every window).
rule select_level:
    input:
        slide=get_slide,
        function=LEVEL_FUNCTION_FILES,
    output:
        level="<results>/{patient}/{slide}/level.json",
        thumbnail=report(
            "<results>/{patient}/{slide}/thumbnail.png",
            caption="../report/thumbnail.rst",
            category="1. Level selection",
            subcategory="{patient}",
            labels={"slide": "{slide}", "figure": "thumbnail"},
        ),
        mask=report(
            "<results>/{patient}/{slide}/mask.png",
            caption="../report/mask.rst",
            category="1. Level selection",
            subcategory="{patient}",
            labels={"slide": "{slide}", "figure": "tissue mask"},
        ),
    log:
        "<logs>/select_level/{patient}/{slide}.log",
    benchmark:
        "<benchmarks>/select_level/{patient}/{slide}.tsv"
    group:
        JOB_GROUP["select_level"]
    conda:
        "../envs/wsiproc.yaml"
    threads: 1
    resources:
        **GPU_JOB_RESOURCES,
        mem_mb=attempt_scaled(2000),
        runtime=attempt_scaled(20),
    params:
        # --on-read-error, the level spec and --fallback-mpp (common.smk).
        args=SELECT_LEVEL_ARGS,
        slide_mpp=get_slide_mpp,
        version=WSIPROC_VERSION,
    shell:
        r"""
        wsiproc level {input.slide:q} \
            --out {output.level:q} \
            --thumbnail {output.thumbnail:q} \
            --mask {output.mask:q} \
            {params.args} \
            {params.slide_mpp} \
            >{log:q} 2>&1
        """

# Heatmaps: windows.csv -> value TIFF (one pixel per window or per processing pixel),
# colour TIFF and QuPath GeoJSON. Only heatmap.* options are params, so re-rendering never
# reruns inference.
rule heatmap:
    input:
        csv=rules.infer.output.csv,
        meta=rules.infer.output.meta,
    output:
        tif="<results>/{patient}/{slide}/heatmap.tif",
        rgb=report(
            "<results>/{patient}/{slide}/heatmap_rgb.tif",
            caption="../report/heatmap.rst",
            category="2. Heatmaps",
            subcategory="{patient}",
            labels={"slide": "{slide}", "figure": "heatmap"},
        ),
        geojson="<results>/{patient}/{slide}/windows.geojson",
    log:
        "<logs>/heatmap/{patient}/{slide}.log",
    benchmark:
        "<benchmarks>/heatmap/{patient}/{slide}.tsv"
    group:
        JOB_GROUP["heatmap"]
    conda:
        "../envs/wsiproc.yaml"
    threads: 1
    resources:
        mem_mb=attempt_scaled(2000),
        runtime=attempt_scaled(30),
    params:
        # --mode, --colormap, --output, --vmin, --vmax (common.smk).
        args=HEATMAP_ARGS,
        version=WSIPROC_VERSION,
    shell:
        r"""
        wsiproc heatmap {input.csv:q} \
            --meta {input.meta:q} \
            --out {output.tif:q} \
            --rgb-out {output.rgb:q} \
            --geojson {output.geojson:q} \
            {params.args} \
            >{log:q} 2>&1
        """

"""Several slides per cluster job: one model load for a batch of slides.

:mod:`.assign` puts the sheet's slides into batches (the workflow's ``{batch}`` wildcard),
:mod:`.keep` keeps a loaded encoder or slide model for the next slide of the same process,
:mod:`.runner` runs a stage's own CLI code for each slide of a batch into a staging directory
and records each slide's outcome, :mod:`.finish` moves one slide's staged files into place
(or fails with the slide's recorded error). ``docs/features.md`` ("Several slides per job").
"""

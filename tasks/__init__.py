"""The stages of the gcmine pipeline as Prefect tasks: thin wrappers around `gcmodels` that read
and write the run root's artifacts (installed as ``gcmine.tasks``).

One module per stage, the task named after it (``gcmine.tasks.ingest.ingest``): `ingest`, `embed`
(and `latents` for checkpoint models), `cluster`, `finetune`, `score`, `rank`, `classify`,
`translate`, `baseline`, `samples`, `publish`, `report`, `evaluate`; `watch` (new data landing)
and `demo` (the bundled datasets). Below them, `infra` (storage, artifacts, caching, integrity,
the run-root lease, GPU slots, progress, errors) and `reporting` (the HTML report and the Prefect
UI's artifacts).

The tasks are not re-exported here: most share their module's name (``gcmine.tasks.ingest`` would
be ambiguous), and importing this package must not load every stage.
"""

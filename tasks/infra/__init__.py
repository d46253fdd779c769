"""What every stage of gcmine stands on, apart from the stages themselves.

- `storage`: run-root storage over fsspec (local, ``file://``, ``s3://``): one retry layer, atomic
  writes, scratch folders;
- `artifacts`: the names and codecs of the run-root artifacts (DESIGN.md, "Artifact contract");
- `caching`: stage caching on content fingerprints (Prefect cache policies);
- `integrity`: an artifact is verified before it is reused;
- `lease`: one writer at a time per run root;
- `models`: the fine-tuned model loaded once per worker process;
- `checkpoints`: the resumable state of an unfinished fine-tuning (written atomically, read back,
  dropped once the model is published);
- `ledger`: the run's bookkeeping: which stages were reused, each stage's summary for run.json;
- `gpu`: one GPU stage per card at a time (a lock and a Prefect concurrency slot);
- `progress`, `logs`: progress bars and Prefect progress artifacts; logging inside and outside runs;
- `errors`: the errors gcmine explains to the user in one line;
- `preflight`, `doctor`: checks made before any work, and those of `gcmine doctor`.

Import from the modules (``from gcmine.tasks.infra.storage import RunStore``): this package
loads nothing by itself, so that a stage pays only for what it uses.
"""

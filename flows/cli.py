"""The `gcmine` command line: run, demo, watch, evaluate, config, serve, doctor."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from pathlib import Path

from gcmodels.config import ConfigError, Settings

# The embedded ephemeral Prefect server needs more time than Prefect's defaults on small machines.
_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LOGGERS_ROOT_LEVEL": "WARNING",
}


def _settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML file of settings (see `gcmine config`)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.steps=500 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcmine", description="Mine what is typical of each label in an image collection with diffusion models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline on a folder or manifest of images")
    run.add_argument("images", help="image folder (recursive; folder per label if no --labels) or CSV/Parquet manifest")
    run.add_argument("--labels", help="CSV/Parquet with columns filename,label")
    run.add_argument("--out", required=True, help="run root: every artifact is written here")
    _settings_args(run)
    from gcmine.tasks.demo import DEMOS

    demo = sub.add_parser("demo", help="build a bundled demo dataset and run the pipeline on it")
    demo.add_argument(
        "name",
        nargs="?",
        default="motifs",
        choices=sorted(DEMOS),
        help="; ".join(f"{k}: {v}" for k, v in DEMOS.items()),
    )
    demo.add_argument("--out", help="run root (default runs/demo-NAME)")
    _settings_args(demo)
    watch = sub.add_parser(
        "watch",
        help="compare a dataset location with its last listing; on changes emit gcmine.dataset.updated",
    )
    watch.add_argument("uri", metavar="URI", help="dataset folder (local or s3://) or CSV/Parquet manifest to watch")
    watch.add_argument("--out", help="run root the dataset is mined into; keeps the last listing (default runs/NAME)")
    _settings_args(watch)
    ev = sub.add_parser(
        "evaluate",
        help="score a finished run's typicality maps against boxes (the paper's AUC-PR, AP, pointing game)",
    )
    ev.add_argument("run", metavar="RUN", help="run root of a finished `gcmine run` (local or s3://)")
    ev.add_argument(
        "--boxes",
        required=True,
        help="CSV/Parquet with columns filename,label,x0,y0,x1,y1 (original pixels; several rows per image allowed)",
    )
    _settings_args(ev)
    cfg = sub.add_parser("config", help="print the effective configuration with its defaults")
    _settings_args(cfg)
    doc = sub.add_parser(
        "doctor",
        help="check a production setup (server, deployments, schedules, workers, limits, storage, settings, model)",
    )
    doc.add_argument("--images", help="images to check (default: the production deployment's, else GCMINE_IMAGES)")
    doc.add_argument("--out", help="run root to check (default: the production deployment's, else GCMINE_OUT)")
    _settings_args(doc)
    serve = sub.add_parser(
        "serve",
        help="show a run root's report over http on 127.0.0.1 (where the Prefect UI's report link points)",
    )
    serve.add_argument("run_root", metavar="RUN", help="run root (local or s3://) holding report/index.html")
    serve.add_argument("--port", type=int, help="port on 127.0.0.1 (default: report.serve_port, 8765)")
    _settings_args(serve)
    return parser


def _print_summary(result: dict, wall: float) -> None:
    stages = result["stages"]
    summary = result["summary"]
    print("\n== gcmine run summary ==", file=sys.stderr)
    print(
        f"images: {summary.get('images')} ({summary.get('ok')} ok, {summary.get('rejected')} rejected), "
        f"labels: {summary.get('labels')}, unlabeled: {summary.get('unlabeled')}, "
        f"labelled files not found: {summary.get('missing_files')}",
        file=sys.stderr,
    )
    by_reason = summary.get("rejected_by_reason") or {}
    if by_reason:
        print("rejected by reason (details in manifest.parquet, column reason):", file=sys.stderr)
        for reason, count in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {count:>6}  {reason}", file=sys.stderr)
    for note in summary.get("notes") or []:
        print(f"note: {note}", file=sys.stderr)
    print(f"{'stage':<10}{'seconds':>10}", file=sys.stderr)
    for name, stage in stages.items():
        print(f"{name:<10}{stage.get('seconds', 0.0):>10.1f}", file=sys.stderr)
    compute = sum(s.get("seconds", 0.0) for s in stages.values())
    print(
        f"{'total':<10}{wall:>10.1f}  (stages {compute:.1f} s, orchestration {wall - compute:.1f} s)", file=sys.stderr
    )
    reused = result.get("reused") or []
    print(f"reused from earlier runs (no model work): {', '.join(reused) if reused else 'nothing'}", file=sys.stderr)
    print(f"report: {result['report']}", file=sys.stderr)


def _print_classifier(found: dict) -> None:
    """Typicality as a classifier: accuracy, confusion matrix and most confused labels."""
    labels = [str(v) for v in found["labels"]]
    acc = found.get("accuracy")
    print("\n== typicality as a classifier ==", file=sys.stderr)
    print(
        f"accuracy {'n/a' if acc is None else f'{100 * acc:.1f}%'} on {found['images']} {found['split']} images "
        f"(chance {100 / max(1, len(labels)):.1f}%)"
        + (
            "" if found["split"] == "held-out" else "; no held-out images: set score.holdout (e.g. 0.2) for a fair test"
        ),
        file=sys.stderr,
    )
    width = max(9, *(len(lab) for lab in labels)) + 1
    corner = "true/pred"
    print(f"{corner:<{width}}" + "".join(f"{lab[: width - 1]:>{width}}" for lab in labels), file=sys.stderr)
    for lab, row in zip(labels, found["confusion"]):
        print(f"{lab[: width - 1]:<{width}}" + "".join(f"{v:>{width}}" for v in row), file=sys.stderr)
    for c in found.get("confused") or []:
        print(
            f"  {c['true']!r} taken for {c['predicted']!r}: {c['count']} image(s), {100 * c['share']:.0f}%",
            file=sys.stderr,
        )


def _print_ground_truth(out: str, truth: Path) -> None:
    import pandas as pd

    from gcmine.tasks.infra.artifacts import ELEMENTS, PATCHES
    from gcmine.tasks.infra.storage import RunStore
    from gcmodels.mining.evaluation import localisation_report

    store = RunStore(out)
    rep = localisation_report(store.read_parquet(PATCHES), pd.read_csv(truth), elements=store.read_parquet(ELEMENTS))
    print("\n== ground truth check ==", file=sys.stderr)
    print(
        f"rank-0 patch contains the motif centre in {100 * rep['rank0_centre']:.1f}% of {rep['images']} images "
        f"(overlaps the motif in {100 * rep['rank0_overlap']:.1f}%)",
        file=sys.stderr,
    )
    for label, purity in rep["top_element_purity"].items():
        print(
            f"top element of {label!r}: {100 * purity:.0f}% motif patches ({rep['top_element_size'][label]} patches)",
            file=sys.stderr,
        )
    if "first_elements_distractor" in rep:
        specific = rep.get("first_specific_elements_distractor")
        print(
            f"the distractor every label shares: in {100 * rep['rank0_distractor']:.1f}% of the rank-0 patches and "
            f"{100 * rep['first_elements_distractor']:.1f}% of the patches of the labels' first 4 elements (none is best"
            + ("" if specific is None else f"; {100 * specific:.1f}% of those of the first 4 not flagged shared")
            + ")",
            file=sys.stderr,
        )


def _print_evaluation(result: dict, boxes: str) -> None:
    """The evaluation summary: per model and label, and pooled over every pair."""
    kind = result.get("maps_kind", "typicality")
    print(f"\n== {kind} maps against the boxes of {boxes} ==", file=sys.stderr)
    if kind != "typicality":
        print(
            "(not the paper's typicality map: for AUC-PR comparable with the paper, score with --set score.contrast=false)",
            file=sys.stderr,
        )
    rows = result["summary"]
    width = max([5, *(len(str(r["label"])) for r in rows)]) + 2
    head = f"{'label':<{width}}{'model':<11}{'pairs':>6}{'AUC-PR':>10}{'AP':>8}{'pointing':>10}{'inside':>11}{'outside':>11}"
    print(head + "   (AUC-PR: the paper's thresholds 2e-2..2e-7)", file=sys.stderr)
    for r in rows:
        print(
            f"{r['label']!s:<{width}}{r['model']:<11}{r['pairs']:>6}{r['aucpr_paper']:>10.4f}{r['ap']:>8.4f}"
            f"{r['pointing']:>10.3f}{r['inside']:>11.3g}{r['outside']:>11.3g}",
            file=sys.stderr,
        )
    print(
        f"evaluated {result['evaluated']} maps of {result['boxes']} box rows; written to {result['evaluation']}",
        file=sys.stderr,
    )
    for reason, count in (result.get("skipped_by_reason") or {}).items():
        print(f"  skipped {count:>5}  {reason} (column reason of evaluation.parquet)", file=sys.stderr)
    if result.get("report"):
        print(f"report (with the evaluation): {result['report']}", file=sys.stderr)


def _evaluate(run: str, boxes: str, settings: Settings) -> int:
    from gcmine.flows.evaluate import evaluate_run

    try:
        result = evaluate_run(out=run, boxes=boxes, storage_options=settings.storage.options())
    except Exception as err:
        return _explained(err)
    _print_evaluation(result, boxes)
    return 0


def _watch(uri: str, out: str | None, config: str | None, overrides: list[str], settings: Settings) -> int:
    from gcmine.flows.production import watch
    from gcmine.tasks.infra.preflight import require_exists
    from gcmine.tasks.watch import DATASET_UPDATED

    # absolute: the event's consumer (a reprocess run) starts in another working directory
    out = out or f"runs/{uri.rstrip('/').rsplit('/', 1)[-1]}"
    out = os.path.abspath(out) if "://" not in out else out
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # the event would go to a temporary server, trigger nothing, and the change would be forgotten
        print(
            f"gcmine watch: PREFECT_API_URL is not set, so {DATASET_UPDATED} would reach no Prefect server; "
            "start one and set it (see README, Production)",
            file=sys.stderr,
        )
        return 2
    try:
        require_exists(uri, "dataset", settings.storage.options())  # one line, before any Prefect work
        changes = watch(uri=uri, out=out, config=config, overrides=overrides)
    except Exception as err:
        return _explained(err)
    print(
        f"{uri}: {changes['added']} added, {changes['changed']} changed, {changes['removed']} removed "
        f"({changes['files']} files; compared with the {changes['against']})",
        file=sys.stderr,
    )
    if changes["event"]:
        print(f"emitted {DATASET_UPDATED} (event {changes['event']})", file=sys.stderr)
    return 0


def _serve(run_root: str, port: int | None, settings: Settings) -> int:
    from gcmine.flows.serve import HOST, report_server
    from gcmine.tasks.reporting.uiartifacts import served_path

    port = settings.report.serve_port if port is None else port
    if not 0 <= port <= 65535:
        print(f"gcmine: --port {port} is not a port number (0-65535)", file=sys.stderr)
        return 2
    try:
        server = report_server(run_root, port, settings.storage.options())
    except Exception as err:
        if isinstance(err, OSError) and err.errno in (errno.EADDRINUSE, errno.EACCES):
            print(
                f"gcmine: cannot listen on {HOST}:{port} ({err.strerror}): stop what uses it or pass --port",
                file=sys.stderr,
            )
            return 2
        return _explained(err)
    print(
        f"gcmine serve: the report of {run_root} at http://{HOST}:{server.server_port}{served_path(run_root)} (Ctrl-C to stop)",
        file=sys.stderr,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _explained(err: Exception) -> int:
    """Print an error gcmine explains in one line and return its exit code; re-raise any other."""
    from gcmine.flows.errors import exit_code

    code = exit_code(err)
    if code is None:
        raise err
    print(f"gcmine: {err}", file=sys.stderr)
    return code


def _doctor(images: str | None, out: str | None, config: str | None, overrides: list[str]) -> int:
    from gcmine.flows.doctor import doctor

    checks = doctor(images, out, config, overrides)
    for check in checks:
        print(check.line())
    failed = [c for c in checks if c.status == "FAIL"]
    print(
        f"{len(failed)} problem(s): fix them in this order, then run gcmine doctor again"
        if failed
        else "all checks passed"
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "doctor":  # the settings file is one of its checks, not a reason to stop
        for key, value in _PREFECT_DEFAULTS.items():
            os.environ.setdefault(key, value)
        return _doctor(args.images, args.out, args.config, args.overrides)
    from gcmine.flows.config import describe_settings, load_settings

    try:
        settings: Settings = load_settings(args.config, args.overrides)
    except ConfigError as err:
        print(f"gcmine: {err}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(describe_settings(settings))
        return 0
    if args.command == "serve":
        return _serve(args.run_root, args.port, settings)
    for key, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from gcmine.flows.errors import one_line_errors

    one_line_errors()  # errors gcmine explains are logged without their traceback
    if args.command == "watch":
        return _watch(args.uri, args.out, args.config, args.overrides, settings)
    if args.command == "evaluate":
        return _evaluate(args.run, args.boxes, settings)
    if args.command == "run":
        from gcmine.tasks.infra.preflight import require_exists

        try:  # a missing input costs one line, not the model stack's import and a Prefect server start
            require_exists(args.images, "IMAGES", settings.storage.options())
            if args.labels is not None:
                require_exists(args.labels, "labels file", settings.storage.options())
        except Exception as err:
            return _explained(err)
    from gcmine.flows.pipeline import run_pipeline

    truth = None
    if args.command == "demo":
        from gcmine.tasks.demo import write_demo

        out = args.out or f"runs/demo-{args.name}"
        images, truth = write_demo(args.name, Path(out) / "dataset")
        labels = None
        print(f"demo {args.name!r}: dataset written to {images}", file=sys.stderr)
    else:
        images, labels, out = args.images, args.labels, args.out
    start = time.perf_counter()
    try:
        result = run_pipeline(str(images), str(out), labels, settings)
    except Exception as err:
        # After a fault finished stages are kept: the same command resumes once the cause is fixed.
        return _explained(err)
    _print_summary(result, time.perf_counter() - start)
    if result.get("classifier"):
        _print_classifier(result["classifier"])
    if truth is not None:
        _print_ground_truth(str(out), truth)
        return _evaluate(str(out), str(truth), settings)  # the maps against the same boxes
    return 0


if __name__ == "__main__":
    sys.exit(main())

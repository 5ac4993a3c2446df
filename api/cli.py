"""The full ``ballistic`` command: the library's commands plus ``serve``, ``worker``, ``ingest``, ``keys``,
``audit`` and ``train`` (the learned models of ``models/``).

The console script points here (``ballistic = "api.cli:main"``) so that the pure library
(``ballistic.cli``) never imports the service: this module imports ``ballistic.cli.app``
and adds the service commands to it. Heavy imports stay inside the commands.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from ballistic.cli import app

audit_app = typer.Typer(help="Audit log of the correlation service.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
keys_app = typer.Typer(help="API keys of the correlation service (on its database, as `serve` finds it).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")
train_app = typer.Typer(help="Train the learned models (models/: torch, CPU only).", no_args_is_help=True)
app.add_typer(train_app, name="train")

_DATA_DIR_HELP = "data folder of `ballistic serve` (BALLISTIC_DATA_DIR; default ./ballistic-data)"
_DB_URL_HELP = "SQLAlchemy URL (BALLISTIC_DATABASE_URL; default the SQLite file in the data folder)"


@train_app.command("descriptor", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_descriptor(ctx: typer.Context) -> None:
    """Train the learned breech-face descriptor; options as `python -m models.train` (e.g. --seed 0,
    --folds out/folds, --no-final, --cv-folds 0,1, --ablation no-real)."""
    from models.breech_face.experiment import main as train_main

    train_main(list(ctx.args))


def _settings(data_dir: Optional[Path], database_url: Optional[str]):
    """The service's Settings exactly as ``ballistic serve`` builds them: options, else BALLISTIC_* environment
    variables, else ./ballistic-data under the current folder."""
    from api.settings import Settings

    kw = {}
    if data_dir is not None:
        kw["data_dir"] = data_dir
    if database_url is not None:
        kw["database_url"] = database_url
    return Settings(**kw)


def _db_name(s) -> str:
    """The database as a person reads it (never a password)."""
    url = str(s.database_url)
    return url.removeprefix("sqlite:///") if s.is_sqlite else url.split("@")[-1]


def _open_db(data_dir: Optional[Path], database_url: Optional[str], *, write: bool):
    """(settings, engine) of the service's database; exit 2 with a hint when there is none."""
    from api.db import make_engine

    s = _settings(data_dir, database_url)
    if s.is_sqlite and not Path(s.database_url.removeprefix("sqlite:///")).is_file():
        typer.echo(f"no database at {_db_name(s)}: run this from the folder where you ran `ballistic serve`, or "
                   "pass --data-dir (or set BALLISTIC_DATA_DIR / BALLISTIC_DATABASE_URL) to point at its data. "
                   "A new service creates its database when `ballistic serve` first starts.", err=True)
        raise typer.Exit(2)
    return s, make_engine(s.database_url, immediate=write)


def _cli_actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"[:200]


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="bind address"),
          port: int = typer.Option(8000, help="TCP port"),
          workers: Optional[int] = typer.Option(None, help="correlation worker processes (BALLISTIC_WORKERS)"),
          no_worker: bool = typer.Option(False, "--no-worker", help="serve the API only; jobs wait in the queue "
                                                                     "(run `ballistic worker` yourself)"),
          data_dir: Optional[Path] = typer.Option(None, help="embedded default root (BALLISTIC_DATA_DIR)"),
          database_url: Optional[str] = typer.Option(None, help="SQLAlchemy URL (BALLISTIC_DATABASE_URL)"),
          log_level: str = typer.Option("info")) -> None:
    """Run the correlation service: the HTTP API in this process, the correlation jobs in WORKERS worker
    processes it starts and watches (`ballistic worker`); docs at /docs."""
    import logging

    import uvicorn

    from api.main import create_app

    s = _settings(data_dir, database_url)
    if workers is not None:
        s.workers = workers
    if no_worker:
        s.run_worker = False
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    typer.echo(f"ballistic: data in {s.data_dir} (database {s.database_url.split('@')[-1]}); "
               f"http://{host}:{port}/docs", err=True)
    uvicorn.run(create_app(s), host=host, port=port, log_level=log_level.lower(), timeout_graceful_shutdown=30)


@app.command()
def worker(slot: int = typer.Option(0, help="worker number (its status file is <data>/run/worker-SLOT.json)"),
           data_dir: Optional[Path] = typer.Option(None, help="embedded default root (BALLISTIC_DATA_DIR)"),
           database_url: Optional[str] = typer.Option(None, help="SQLAlchemy URL (BALLISTIC_DATABASE_URL)"),
           log_level: str = typer.Option("warning")) -> None:
    """Run one correlation worker process: jobs from the service's queue, one at a time, at lower CPU priority
    and with a memory limit. `ballistic serve` starts WORKERS of them itself (and restarts them); run this
    by hand only beside `ballistic serve --no-worker`."""
    import logging

    from api.jobs.worker import run_worker

    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s %(levelname)s worker-{slot} %(name)s: "
                                                          "%(message)s")
    raise typer.Exit(run_worker(_settings(data_dir, database_url), slot=slot))


@app.command()
def ingest(directory: Path = typer.Argument(..., exists=True, file_okay=False, help="folder of x3p / PNG / TIFF"),
           labels: Optional[Path] = typer.Option(None, help="metadata CSV (e.g. Fadul labels.csv)"),
           api_url: str = typer.Option("http://127.0.0.1:8000", envvar="BALLISTIC_API_URL"),
           api_key: str = typer.Option(..., envvar="BALLISTIC_API_KEY", help="examiner or admin key"),
           agency: str = typer.Option("ingest", help="agency when the CSV has none"),
           calibre: Optional[str] = typer.Option(None, help="calibre when the CSV has none (Fadul: 9mm)"),
           firing_pin_shape: Optional[str] = typer.Option(None),
           exhibit_type: Optional[str] = typer.Option(None, help="cartridge_case or bullet when the CSV has none "
                                                               "(bullets: one land per file, grouped by bullet)"),
           case_prefix: str = typer.Option("", help="prepended to every case number"),
           case_by: str = typer.Option("file", help="file: each scan its own case (unless the CSV has case_number); "
                                                    "folder: each sub-folder of DIRECTORY one case (sub-folders "
                                                    "are searched)"),
           case_column: Optional[str] = typer.Option(None, help="name each scan's case by this labels-CSV column "
                                                                "(scans with the same value share a case)"),
           pattern: str = typer.Option("*", help="glob of file names"),
           concurrency: int = typer.Option(2, min=1, max=32),
           wait: bool = typer.Option(False, help="wait until every correlation job has finished"),
           report: Optional[Path] = typer.Option(None, help="write the per-file results as JSON")) -> None:
    """Bulk-upload a folder through the HTTP API (progress bar); metadata from a CSV. Checks first that the
    service answers and that the key may submit; stops with one message otherwise."""
    from api.ingest import IngestError, ingest_directory

    try:
        res = ingest_directory(directory, api_url=api_url, api_key=api_key, labels=labels, agency=agency,
                               calibre=calibre, firing_pin_shape=firing_pin_shape, case_prefix=case_prefix,
                               pattern=pattern, concurrency=concurrency, wait=wait, progress=True,
                               exhibit_type=exhibit_type, case_by=case_by, case_column=case_column)
    except IngestError as e:
        typer.echo(f"ballistic ingest: {e}", err=True)
        raise typer.Exit(2)
    counts: dict[str, int] = {}
    for r in res:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    typer.echo(json.dumps(counts))
    for r in res:
        if r["status"] == "error":
            typer.echo(f"  {r['file']}: {r.get('http_status')} {r.get('error')}", err=True)
    if report:
        report.write_text(json.dumps(res, indent=2))
    if counts.get("error"):
        raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify(data_dir: Optional[Path] = typer.Option(None, help=_DATA_DIR_HELP),
                 database_url: Optional[str] = typer.Option(None, help=_DB_URL_HELP)) -> None:
    """Recompute the audit hash chain of the service's database (found as `serve` finds it) and say which
    database was checked; exit 1 at the first row that does not verify, 2 when there is no database."""
    from api.audit import verify_chain
    from api.db import make_sessionmaker

    s, engine = _open_db(data_dir, database_url, write=False)
    with make_sessionmaker(engine)() as sess:
        rep = verify_chain(sess)
    engine.dispose()
    typer.echo(f"audit chain of {_db_name(s)}: {'verified' if rep.ok else 'BROKEN'}", err=True)
    typer.echo(json.dumps({"database": _db_name(s), **rep.as_dict()}, indent=2))
    if not rep.ok:
        raise typer.Exit(1)


@keys_app.command("create")
def keys_create(scope: str = typer.Option(..., help="examiner, intelligence or admin"),
                name: str = typer.Option(..., help="who or what uses the key, e.g. 'Examiner Alice'"),
                quiet: bool = typer.Option(False, "--quiet", "-q", help="print the key only (for scripts)"),
                data_dir: Optional[Path] = typer.Option(None, help=_DATA_DIR_HELP),
                database_url: Optional[str] = typer.Option(None, help=_DB_URL_HELP)) -> None:
    """Create an API key in the service's database (audited) and print its secret once."""
    from api.db import make_sessionmaker, session_scope
    from pydantic import ValidationError

    from api.services.keys import issue_key
    from api.schemas import KeyCreate

    try:
        body = KeyCreate(name=name, scope=scope)
    except ValidationError as e:
        err = e.errors()[0]
        typer.echo(f"invalid --{err['loc'][0]}: {err['msg']}", err=True)
        raise typer.Exit(2)
    s, engine = _open_db(data_dir, database_url, write=True)
    with session_scope(make_sessionmaker(engine)) as sess:
        k, raw = issue_key(sess, name=body.name, scope=body.scope, actor=_cli_actor(), via="cli")
        kid = k.id
    engine.dispose()
    if quiet:
        typer.echo(raw)
        return
    typer.echo(f"{body.scope} key {kid} '{body.name}' created in {_db_name(s)}; the secret is shown once, store it "
               "now (send it as the X-API-Key header, or sign in to the workbench with it):")
    typer.echo(raw)


@keys_app.command("list")
def keys_list(data_dir: Optional[Path] = typer.Option(None, help=_DATA_DIR_HELP),
              database_url: Optional[str] = typer.Option(None, help=_DB_URL_HELP)) -> None:
    """List the API keys (id, scope, name, prefix, created, revoked); never their secrets."""
    from sqlalchemy import select

    from api.db import make_sessionmaker
    from api.db.models import ApiKey

    s, engine = _open_db(data_dir, database_url, write=False)
    with make_sessionmaker(engine)() as sess:
        rows = sess.execute(select(ApiKey).order_by(ApiKey.id)).scalars().all()
        typer.echo(f"{'id':>4}  {'scope':<12} {'prefix':<11} {'created':<20} {'revoked':<20} name")
        for k in rows:
            typer.echo(f"{k.id:>4}  {k.scope:<12} {k.prefix:<11} {k.created_at:%Y-%m-%d %H:%M:%S}  "
                       f"{(f'{k.revoked_at:%Y-%m-%d %H:%M:%S}' if k.revoked_at else '-'):<20} {k.name}")
    engine.dispose()
    typer.echo(f"{len(rows)} key(s) in {_db_name(s)}", err=True)


@keys_app.command("revoke")
def keys_revoke(key_id: int = typer.Argument(..., help="the key's id (see `ballistic keys list`)"),
                data_dir: Optional[Path] = typer.Option(None, help=_DATA_DIR_HELP),
                database_url: Optional[str] = typer.Option(None, help=_DB_URL_HELP)) -> None:
    """Revoke an API key (audited): it is refused at once, browser sessions included."""
    from api.db import make_sessionmaker, session_scope
    from api.db.models import ApiKey
    from api.services.keys import revoke

    s, engine = _open_db(data_dir, database_url, write=True)
    with session_scope(make_sessionmaker(engine)) as sess:
        k = sess.get(ApiKey, key_id)
        if k is None:
            typer.echo(f"no key {key_id} in {_db_name(s)} (see `ballistic keys list`)", err=True)
            raise typer.Exit(1)
        done = revoke(sess, k, actor=_cli_actor())
        name = k.name
    engine.dispose()
    typer.echo(f"key {key_id} '{name}' {'revoked' if done else 'was already revoked'}")


def main() -> None:  # console script entry point
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

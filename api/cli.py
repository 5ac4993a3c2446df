"""The full ``ballistic`` command: the library's commands plus ``serve``, ``ingest`` and ``audit verify``.

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


def _settings(data_dir: Optional[Path], database_url: Optional[str]):
    from api.settings import Settings

    kw = {}
    if data_dir is not None:
        kw["data_dir"] = data_dir
    if database_url is not None:
        kw["database_url"] = database_url
    return Settings(**kw)


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="bind address"),
          port: int = typer.Option(8000, help="TCP port"),
          workers: Optional[int] = typer.Option(None, help="correlation worker threads (BALLISTIC_WORKERS)"),
          no_worker: bool = typer.Option(False, "--no-worker", help="serve the API only; jobs wait in the queue"),
          data_dir: Optional[Path] = typer.Option(None, help="embedded default root (BALLISTIC_DATA_DIR)"),
          database_url: Optional[str] = typer.Option(None, help="SQLAlchemy URL (BALLISTIC_DATABASE_URL)"),
          log_level: str = typer.Option("info")) -> None:
    """Run the correlation service (HTTP API + in-process job worker); docs at /docs."""
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
def ingest(directory: Path = typer.Argument(..., exists=True, file_okay=False, help="folder of x3p / PNG / TIFF"),
           labels: Optional[Path] = typer.Option(None, help="metadata CSV (e.g. Fadul labels.csv)"),
           api_url: str = typer.Option("http://127.0.0.1:8000", envvar="BALLISTIC_API_URL"),
           api_key: str = typer.Option(..., envvar="BALLISTIC_API_KEY", help="examiner or admin key"),
           agency: str = typer.Option("ingest", help="agency when the CSV has none"),
           calibre: Optional[str] = typer.Option(None, help="calibre when the CSV has none (Fadul: 9mm)"),
           firing_pin_shape: Optional[str] = typer.Option(None),
           exhibit_type: Optional[str] = typer.Option(None, help="cartridge_case or bullet when the CSV has none "
                                                               "(bullets: one land per file, grouped by bullet)"),
           case_prefix: str = typer.Option("", help="prepended to case numbers derived from scan names"),
           pattern: str = typer.Option("*", help="glob of file names"),
           concurrency: int = typer.Option(2, min=1, max=32),
           wait: bool = typer.Option(False, help="wait until every correlation job has finished"),
           report: Optional[Path] = typer.Option(None, help="write the per-file results as JSON")) -> None:
    """Bulk-upload a folder through the HTTP API (progress bar); metadata from a CSV."""
    from api.ingest import ingest_directory

    res = ingest_directory(directory, api_url=api_url, api_key=api_key, labels=labels, agency=agency,
                           calibre=calibre, firing_pin_shape=firing_pin_shape, case_prefix=case_prefix,
                           pattern=pattern, concurrency=concurrency, wait=wait, progress=True,
                           exhibit_type=exhibit_type)
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
def audit_verify(data_dir: Optional[Path] = typer.Option(None, help="BALLISTIC_DATA_DIR"),
                 database_url: Optional[str] = typer.Option(None, help="BALLISTIC_DATABASE_URL")) -> None:
    """Recompute the audit hash chain in the database; exit 1 at the first row that does not verify."""
    from api.audit import verify_chain
    from api.db import make_engine, make_sessionmaker

    s = _settings(data_dir, database_url)
    if s.is_sqlite and not Path(s.database_url.removeprefix("sqlite:///")).is_file():
        typer.echo(f"no database at {s.database_url}", err=True)
        raise typer.Exit(2)
    engine = make_engine(s.database_url, immediate=False)
    with make_sessionmaker(engine)() as sess:
        rep = verify_chain(sess)
    engine.dispose()
    typer.echo(json.dumps(rep.as_dict(), indent=2))
    if not rep.ok:
        raise typer.Exit(1)


def main() -> None:  # console script entry point
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

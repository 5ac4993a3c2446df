"""The examiner workbench: server-rendered pages under ``/web`` on top of the service's functions.

Business logic is not repeated here: candidate lists, reviews (decision, feed event, audit row), the hits
feed and the series graph are the functions of :mod:`api.services` that the JSON routes call too, called
with the signed-in key's :class:`~api.deps.Principal`; permissions are :data:`api.security.PERMISSIONS`.
What is here is presentation: search and pagination of the exhibit list, pictures, charts.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Annotated, Any, Optional
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import func, or_, select

from api import audit
from api.db.models import Candidate, Case, Exhibit, HitEvent, Job
from api.errors import NotFound, ServiceError
from api.schemas import ReviewCreate
from api.services.candidates import list_candidates, second_look, second_look_figure
from api.services.exhibits import exhibit_row
from api.services.graph import confirmed_graph
from api.services.hits import hits_feed
from api.services.reviews import list_reviews, review_candidate
from api.services.serializers import exhibit_public
from api.web import auth, charts, images

__all__ = ["router", "TEMPLATES_DIR", "STATIC_DIR", "BENCH_DIR_ENV"]

log = logging.getLogger("ballistic.web")

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
#: folder holding ``ballistic bench cartridge --json`` outputs (JSON + *_hist.png / *_roc.png)
BENCH_DIR_ENV = "BALLISTIC_WEB_BENCH_DIR"
PAGE_SIZE = 50
#: regions whose candidates are pictured from the exhibits' preprocessed breech-face surfaces
IMAGE_REGIONS = ("breech_face", "breech_face_2d")

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))

CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
NO_STORE = {"Cache-Control": "no-store"}


# --------------------------------------------------------------------------- helpers
def _harden(resp: Response) -> Response:
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("Cache-Control", "no-store")
    return resp


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def _page(request: Request, ws: auth.WebSession | None, name: str, ctx: dict[str, Any] | None = None,
          status_code: int = 200) -> HTMLResponse:
    c = {"user": ws.principal if ws else None, "csrf": ws.csrf if ws else None, "root": _root(request),
         "can_evidence": bool(ws and ws.can("evidence:read")), "can_review": bool(ws and ws.can("review")),
         "can_intel": bool(ws and ws.can("intel:read"))}
    c.update(ctx or {})
    return _harden(templates.TemplateResponse(request, name, c, status_code=status_code))


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _redirect(request: Request, url: str) -> Response:
    if _is_htmx(request):  # a redirect inside an htmx swap would swap the target page into a fragment
        return _harden(Response(status_code=204, headers={"HX-Redirect": url}))
    return _harden(RedirectResponse(url, status_code=303))


def _gate(request: Request, permission: str | None) -> tuple[auth.WebSession | None, Response | None]:
    """(session, None) when the browser's key holds ``permission``; else (session, response to return):
    the login page for no session, a 403 page for the wrong scope (same rule as the JSON API)."""
    ws = auth.current_session(request)
    if ws is None:
        nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return None, _redirect(request, f"{_root(request)}/web/login?next={quote(nxt, safe='')}")
    if permission and not ws.can(permission):
        return ws, _page(request, ws, "error.html", {
            "code": 403, "title": "Not allowed",
            "message": f"The '{ws.principal.scope}' scope does not allow this page ({permission} is required)."},
            status_code=403)
    return ws, None


def _not_found(request: Request, ws, what: str) -> HTMLResponse:
    return _page(request, ws, "error.html", {"code": 404, "title": "Not found", "message": f"{what} not found."},
                 status_code=404)


def _safe_next(nxt: str | None, root: str) -> str | None:
    if nxt and re.fullmatch(r"/web(/[A-Za-z0-9_\-./?=&%:+]*)?", nxt) and "//" not in nxt:
        return root + nxt
    return None


def _home(ws: auth.WebSession, root: str) -> str:
    return f"{root}/web/exhibits" if ws.can("evidence:read") else f"{root}/web/dashboard"


def _lr(*objs) -> dict | None:
    """The likelihood ratio stored with a candidate, where a calibration of its region is configured:
    ``log10_lr`` with its interval (``log10_lr_low`` / ``log10_lr_high``) and ``calibration_id``;
    read from the row or its public model, else from the explanation JSON. None when absent."""
    for o in objs:
        if o is None:
            continue
        get = o.get if isinstance(o, dict) else (lambda name, _o=o: getattr(_o, name, None))
        v = get("log10_lr")
        if v is not None:
            low, high = get("log10_lr_low"), get("log10_lr_high")
            iv = get("log10_lr_interval")
            if low is None and high is None and isinstance(iv, (list, tuple)) and len(iv) == 2:
                low, high = iv
            cal = get("calibration_id") or get("calibration")
            if isinstance(cal, dict):
                cal = cal.get("id") or cal.get("calibration_id") or cal.get("name")
            return {"log10": float(v), "low": low, "high": high, "calibration": cal}
        v = get("lr") or get("likelihood_ratio")
        if isinstance(v, (int, float)) and v > 0:
            import math

            return {"log10": math.log10(v), "low": None, "high": None, "calibration": None}
    return None


def _audit_read(rt, who, action: str, resource_type: str, resource_id: int, detail: dict) -> None:
    with rt.session_factory() as s:
        audit.append(s, actor=who.actor, action=action, resource_type=resource_type, resource_id=resource_id,
                     detail=detail)
        s.commit()


# --------------------------------------------------------------------------- login / logout
@router.get("/")
def root_redirect(request: Request) -> Response:
    return RedirectResponse(f"{_root(request)}/web/", status_code=303)


@router.get("/web/")
@router.get("/web")
def web_home(request: Request) -> Response:
    ws = auth.current_session(request)
    if ws is None:
        return _redirect(request, f"{_root(request)}/web/login")
    return _redirect(request, _home(ws, _root(request)))


def _login_page(request: Request, error: str | None = None, nxt: str | None = None, status_code: int = 200):
    token = secrets.token_urlsafe(24)
    resp = _page(request, None, "login.html", {"error": error, "login_csrf": token, "next": nxt or ""},
                 status_code=status_code)
    auth.set_cookie(resp, request, auth.CSRF_COOKIE, token, max_age=3600)
    return resp


@router.get("/web/login")
def login_form(request: Request, next: Annotated[Optional[str], Query(max_length=500)] = None) -> Response:
    ws = auth.current_session(request)
    if ws is not None:
        return _redirect(request, _safe_next(next, _root(request)) or _home(ws, _root(request)))
    return _login_page(request, nxt=next)


@router.post("/web/login")
def login(request: Request, api_key: Annotated[str, Form(max_length=300)] = "",
          csrf_token: Annotated[str, Form(max_length=200)] = "",
          next: Annotated[str, Form(max_length=500)] = "") -> Response:
    if not auth.check_csrf(request, csrf_token, None):
        return _login_page(request, "The form expired; please sign in again.", next, status_code=400)
    key = auth.login_key(request, api_key)
    if key is None:
        return _login_page(request, "Invalid or revoked API key.", next, status_code=401)
    rt = request.app.state.runtime
    token, csrf = auth.new_session_cookie(rt, key)
    from api.deps import Principal

    _audit_read(rt, Principal(key.id, key.name, key.scope), "web.login", "api_key", key.id,
                {"scope": key.scope, "client": request.client.host if request.client else None})
    root = _root(request)
    dest = _safe_next(next, root) or (f"{root}/web/exhibits" if key.scope in ("examiner", "admin")
                                      else f"{root}/web/dashboard")
    resp = _harden(RedirectResponse(dest, status_code=303))
    auth.set_cookie(resp, request, auth.SESSION_COOKIE, token)
    auth.set_cookie(resp, request, auth.CSRF_COOKIE, csrf)
    return resp


@router.post("/web/logout")
def logout(request: Request, csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
    ws = auth.current_session(request)
    if ws is not None and not auth.check_csrf(request, csrf_token, ws):
        return _page(request, ws, "error.html", {"code": 400, "title": "Form expired",
                                                 "message": "Reload the page and try again."}, status_code=400)
    if ws is not None:  # end it on the server too: a copy of the cookie is refused from now on
        rt = request.app.state.runtime
        auth.end_session(rt, request)
        _audit_read(rt, ws.principal, "web.logout", "api_key", ws.principal.key_id, {})
    resp = _harden(RedirectResponse(f"{_root(request)}/web/login", status_code=303))
    auth.clear_cookies(resp, request)
    return resp


# --------------------------------------------------------------------------- exhibits
def _like(v: str) -> str:
    return "%" + v.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _exhibit_filters(q, *, case: str | None, exhibit: str | None, agency: str | None, calibre: str | None,
                     role: str | None, date_from: dt.date | None, date_to: dt.date | None):
    if case:
        q = q.where(Case.case_number.ilike(_like(case), escape="\\"))
    if exhibit:
        q = q.where(Exhibit.exhibit_ref.ilike(_like(exhibit), escape="\\"))
    if agency:
        q = q.where(Case.agency.ilike(_like(agency), escape="\\"))
    if calibre:
        q = q.where(Exhibit.calibre == calibre)
    if role:
        q = q.where(Exhibit.role == role)
    if date_from:
        q = q.where(Exhibit.recovery_date >= date_from)
    if date_to:
        q = q.where(Exhibit.recovery_date <= date_to)
    return q


def _candidate_summaries(session, ids: list[int]) -> dict[int, dict]:
    """Per exhibit of a page: candidates, best CMC count and score, identifications not yet reviewed."""
    out = {i: {"n": 0, "best_cmc": None, "best_score": None, "open_ids": 0, "confirmed": 0} for i in ids}
    if not ids:
        return out
    rows = session.execute(select(Candidate.exhibit_a_id, Candidate.exhibit_b_id, Candidate.cmc_count,
                                  Candidate.similarity, Candidate.identification, Candidate.review_status)
                           .where(or_(Candidate.exhibit_a_id.in_(ids), Candidate.exhibit_b_id.in_(ids)))).all()
    for a, b, cmc, sim, ident, status in rows:
        for e in (a, b):
            d = out.get(e)
            if d is None:
                continue
            d["n"] += 1
            if d["best_score"] is None or sim > d["best_score"]:
                d["best_score"], d["best_cmc"] = sim, cmc
            d["open_ids"] += int(bool(ident) and status == "unreviewed")
            d["confirmed"] += int(status == "confirmed")
    return out


def _latest_jobs(session, ids: list[int]) -> dict[int, Job]:
    if not ids:
        return {}
    latest = select(func.max(Job.id)).where(Job.exhibit_id.in_(ids)).group_by(Job.exhibit_id)
    return {j.exhibit_id: j for j in session.execute(select(Job).where(Job.id.in_(latest))).scalars()}


@router.get("/web/exhibits")
def exhibit_list(request: Request,
                 case: Annotated[Optional[str], Query(max_length=200)] = None,
                 exhibit: Annotated[Optional[str], Query(max_length=200)] = None,
                 agency: Annotated[Optional[str], Query(max_length=200)] = None,
                 calibre: Annotated[Optional[str], Query(max_length=50)] = None,
                 role: Annotated[Optional[str], Query(pattern="^(evidence|test_fire|)$")] = None,
                 date_from: Annotated[Optional[str], Query(max_length=10)] = None,
                 date_to: Annotated[Optional[str], Query(max_length=10)] = None,
                 page: Annotated[int, Query(ge=1, le=10**6)] = 1) -> Response:
    ws, deny = _gate(request, "evidence:read")
    if deny:
        return deny
    errors = []

    def as_date(v: str | None, name: str) -> dt.date | None:
        if not v:
            return None
        try:
            return dt.date.fromisoformat(v)
        except ValueError:
            errors.append(f"{name}: not a date (YYYY-MM-DD)")
            return None

    f = dict(case=(case or "").strip() or None, exhibit=(exhibit or "").strip() or None,
             agency=(agency or "").strip() or None, calibre=calibre or None, role=role or None,
             date_from=as_date(date_from, "from"), date_to=as_date(date_to, "to"))
    rt = request.app.state.runtime
    with rt.read_factory() as s:
        base = _exhibit_filters(select(Exhibit.id).join(Case, Case.id == Exhibit.case_id), **f)
        total = s.execute(select(func.count()).select_from(base.subquery())).scalar_one()
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(page, pages)
        rows = s.execute(_exhibit_filters(select(Exhibit).join(Case, Case.id == Exhibit.case_id), **f)
                         .order_by(Exhibit.id.desc()).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
                         ).scalars().unique().all()
        ids = [e.id for e in rows]
        jobs = _latest_jobs(s, ids)
        summ = _candidate_summaries(s, ids)
        calibres = [c for (c,) in s.execute(select(Exhibit.calibre).where(Exhibit.calibre.is_not(None))
                                            .distinct().order_by(Exhibit.calibre)).all()]
    params = {k: v for k, v in dict(case=case, exhibit=exhibit, agency=agency, calibre=calibre, role=role,
                                    date_from=date_from, date_to=date_to).items() if v}
    ctx = {"rows": rows, "jobs": jobs, "summ": summ, "total": total, "page": page, "pages": pages,
           "params": params, "qs": lambda **kw: urlencode({**params, **kw}), "calibres": calibres,
           "errors": errors, "page_size": PAGE_SIZE}
    if _is_htmx(request) and request.headers.get("hx-target") == "results":
        return _page(request, ws, "_exhibit_rows.html", ctx)
    return _page(request, ws, "exhibits.html", ctx)


@router.get("/web/exhibits/{exhibit_id}")
def exhibit_page(request: Request, exhibit_id: int,
                 review_status: Annotated[Optional[str],
                                          Query(pattern="^(unreviewed|confirmed|rejected|inconclusive|)$")] = None,
                 role: Annotated[Optional[str], Query(pattern="^(evidence|test_fire|)$")] = None,
                 min_score: Annotated[Optional[float], Query(ge=-1e9, le=1e9)] = None,
                 limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Response:
    ws, deny = _gate(request, "evidence:read")
    if deny:
        return deny
    rt = request.app.state.runtime
    with rt.read_factory() as s:
        try:
            e = exhibit_row(s, exhibit_id)
        except NotFound:
            return _not_found(request, ws, f"Exhibit {exhibit_id}")
        ex = exhibit_public(s, e)
        cands = list_candidates(rt, s, exhibit_id, include_explanation=False, review_status=review_status or None,
                                role=role or None, min_score=min_score, limit=limit)
    lrs = {c.id: _lr(c) for c in cands.items}
    return _page(request, ws, "exhibit.html", {"e": ex, "cands": cands.items, "lrs": lrs,
                                               "filters": {"review_status": review_status or "", "role": role or "",
                                                           "min_score": "" if min_score is None else min_score}})


@router.get("/web/exhibits/{exhibit_id}/relief.png")
def exhibit_relief(request: Request, exhibit_id: int,
                   view: Annotated[str, Query(pattern="^(processed|original)$")] = "processed") -> Response:
    ws, deny = _gate(request, "evidence:read")
    if deny:
        return deny
    rt = request.app.state.runtime
    with rt.read_factory() as s:
        try:
            e = exhibit_row(s, exhibit_id)
        except NotFound:
            return _not_found(request, ws, f"Exhibit {exhibit_id}")
        s.expunge(e)
    try:
        path = images.relief_png(rt, e, view)
    except (OSError, ValueError) as err:
        log.warning("relief of exhibit %s (%s) failed: %s", exhibit_id, view, err)
        path = None
    if path is None:
        return _harden(Response(status_code=404, content=b"not available yet", media_type="text/plain"))
    _audit_read(rt, ws.principal, "evidence.read_view", "exhibit", e.id,
                {"view": f"relief-{view}", "render": images.RENDER_VERSION})
    return _harden(FileResponse(path, media_type="image/png", headers=NO_STORE))


# --------------------------------------------------------------------------- comparison
def _comparison_ctx(rt, s, ws, c: Candidate, from_id: int | None) -> dict:
    direction = "backward" if from_id == c.exhibit_b_id else "forward"
    ref, other = (c.exhibit_a, c.exhibit_b) if direction == "forward" else (c.exhibit_b, c.exhibit_a)
    ex = c.explanation or {}
    d = ex.get(direction) or {}
    params = ex.get("params") or {}
    k = images.CELL_SCALE
    thr = params.get("corr_threshold", 0.5)
    cells = [{"row": x.get("row"), "col": x.get("col"), "y0": x["y0_px"] * k, "x0": x["x0_px"] * k,
              "size": x["size_px"] * k, "cmc": bool(x.get("cmc")), "corr": x.get("corr"),
              "angle": x.get("angle_deg"), "dy": x.get("dy_um"), "dx": x.get("dx_um"),
              "status": "cmc" if x.get("cmc") else ("high" if (x.get("corr") or -1) >= thr else "low")}
             for x in d.get("cells", []) if "y0_px" in x]
    reg = d.get("registration") or (c.registration if direction == "forward" else {})
    reviews = list_reviews(s, c.id)
    a_lbl, b_lbl = (f"{e.case.case_number}/{e.exhibit_ref}" for e in (c.exhibit_a, c.exhibit_b))
    per_dir = [(f"{a_lbl} \u2192 {b_lbl}", ex.get("cmc_forward"), ex.get("cells_forward")),
               (f"{b_lbl} \u2192 {a_lbl}", ex.get("cmc_backward"), ex.get("cells_backward"))]
    if direction == "backward":
        per_dir.reverse()
    return {"c": c, "direction": direction, "ref": ref, "other": other, "from_id": ref.id,
            "cells": cells, "cells_json": json.dumps(cells, separators=(",", ":")).replace("<", "\\u003c"), "reg": reg,
            "consensus": d.get("consensus") or {}, "summary": ex, "params": params, "reviews": reviews,
            "per_dir": per_dir, "n_cmc_dir": sum(1 for x in cells if x["cmc"]), "n_cells_dir": len(cells),
            "lr": _lr(c, ex), "display_spacing": images.display_spacing(ex),
            "pictures": c.region in IMAGE_REGIONS,
            "ready": c.region in IMAGE_REGIONS and bool(ref.derived_path and other.derived_path)}


@router.get("/web/candidates/{candidate_id}")
def comparison_page(request: Request, candidate_id: int,
                    from_: Annotated[Optional[int], Query(alias="from", ge=1, le=2**62)] = None,
                    reviewed: Annotated[Optional[str], Query(max_length=20)] = None) -> Response:
    ws, deny = _gate(request, "evidence:read")
    if deny:
        return deny
    rt = request.app.state.runtime
    with rt.read_factory() as s:
        c = s.get(Candidate, candidate_id) if 1 <= candidate_id <= 2**62 else None
        if c is None:
            return _not_found(request, ws, f"Candidate {candidate_id}")
        ctx = _comparison_ctx(rt, s, ws, c, from_)
    ctx["reviewed"] = reviewed
    return _page(request, ws, "compare.html", ctx)


@router.get("/web/candidates/{candidate_id}/{direction}/{which}.png")
def comparison_image(request: Request, candidate_id: int, direction: str, which: str) -> Response:
    ws, deny = _gate(request, "evidence:read")
    if deny:
        return deny
    if direction not in ("forward", "backward") or which not in ("reference", "aligned"):
        return _not_found(request, ws, "Image")
    rt = request.app.state.runtime
    with rt.read_factory() as s:
        c = s.get(Candidate, candidate_id) if 1 <= candidate_id <= 2**62 else None
        if c is None:
            return _not_found(request, ws, f"Candidate {candidate_id}")
        s.expunge_all()
    if c.region not in IMAGE_REGIONS:
        return _not_found(request, ws, f"A picture of region {c.region}")
    try:
        pngs = images.pair_pngs(rt, c, direction)
    except (OSError, ValueError, LookupError) as err:
        log.warning("pair view of candidate %s failed: %s", candidate_id, err)
        pngs = None
    if pngs is None:
        return _harden(Response(status_code=404, content=b"not available yet", media_type="text/plain"))
    _audit_read(rt, ws.principal, "evidence.read_view", "candidate", c.id,
                {"view": f"pair-{direction}-{which}", "exhibits": [c.exhibit_a_id, c.exhibit_b_id],
                 "render": images.RENDER_VERSION})
    return _harden(FileResponse(pngs[0] if which == "reference" else pngs[1], media_type="image/png",
                                headers=NO_STORE))


def _second_look_call(request: Request, ws, candidate_id: int, fn) -> tuple[Any, Response | None]:
    """``fn(runtime, session, principal, candidate_id)`` - the JSON API's second look or its figure - as
    ``(result, None)``, or ``(None, error page)`` for an unknown candidate or one it cannot look at again."""
    if not 1 <= candidate_id <= 2**62:
        return None, _not_found(request, ws, f"Candidate {candidate_id}")
    rt = request.app.state.runtime
    try:
        with rt.session_factory() as s:
            return fn(rt, s, ws.principal, candidate_id), None
    except NotFound:
        return None, _not_found(request, ws, f"Candidate {candidate_id}")
    except ServiceError as err:
        return None, _page(request, ws, "error.html", {"code": err.status, "title": "No second look",
                                                       "message": str(err)}, status_code=err.status)


@router.get("/web/candidates/{candidate_id}/second-look")
def second_look_panel(request: Request, candidate_id: int) -> Response:
    """The JSON API's second look (thorough registration, audited, nothing stored changes) as a panel of the
    comparison page (htmx) or a page of its own."""
    ws, deny = _gate(request, "evidence:read")
    if deny:
        return deny
    sl, err = _second_look_call(request, ws, candidate_id, second_look)
    if err is not None:
        return err
    return _page(request, ws, "_second_look.html" if _is_htmx(request) else "second_look.html", {"sl": sl})


@router.get("/web/candidates/{candidate_id}/second-look.png")
def second_look_image(request: Request, candidate_id: int) -> Response:
    ws, deny = _gate(request, "evidence:read")
    if deny:
        return deny
    png, err = _second_look_call(request, ws, candidate_id, second_look_figure)
    if err is not None:
        return err
    return _harden(FileResponse(png, media_type="image/png", headers=NO_STORE))


@router.post("/web/candidates/{candidate_id}/review")
def review(request: Request, candidate_id: int,
           decision: Annotated[str, Form(max_length=20)] = "",
           comment: Annotated[str, Form(max_length=5000)] = "",
           csrf_token: Annotated[str, Form(max_length=200)] = "",
           from_: Annotated[Optional[int], Form(alias="from", ge=1, le=2**62)] = None) -> Response:
    ws, deny = _gate(request, "review")
    if deny:
        return deny
    if not auth.check_csrf(request, csrf_token, ws):
        return _page(request, ws, "error.html", {"code": 400, "title": "Form expired",
                                                 "message": "The form's security token did not match; reload "
                                                            "the page and decide again."}, status_code=400)
    try:
        body = ReviewCreate(decision=decision, comment=comment.strip() or None)
    except ValidationError as err:
        return _page(request, ws, "error.html", {"code": 422, "title": "Invalid decision",
                                                 "message": "; ".join(x["msg"] for x in err.errors())},
                     status_code=422)
    rt = request.app.state.runtime
    try:
        with rt.session_factory() as s:  # the JSON API's review: decision, feed event, audit row, one commit
            review_candidate(s, ws.principal, candidate_id, body)
    except NotFound:
        return _not_found(request, ws, f"Candidate {candidate_id}")
    root = _root(request)
    if _is_htmx(request):
        with rt.read_factory() as s:
            c = s.get(Candidate, candidate_id)
            ctx = _comparison_ctx(rt, s, ws, c, from_)
        ctx["reviewed"] = body.decision
        return _page(request, ws, "_decision.html", ctx)
    q = urlencode({k: v for k, v in (("from", from_), ("reviewed", body.decision)) if v})
    return _redirect(request, f"{root}/web/candidates/{candidate_id}?{q}")


# --------------------------------------------------------------------------- intelligence
_bench_cache: dict[str, tuple[float, dict | None]] = {}


def bench_dir() -> Path | None:
    v = os.environ.get(BENCH_DIR_ENV)
    return Path(v).expanduser().resolve() if v else None


def _bench_runs(folder: Path) -> list[dict]:
    """``ballistic bench cartridge`` summaries in ``folder`` (newest first), with their plots that exist."""
    runs = []
    for p in sorted(folder.glob("*.json")):
        try:
            st = p.stat()
        except OSError:
            continue
        if st.st_size > 5_000_000:
            continue
        hit = _bench_cache.get(str(p))
        if hit is None or hit[0] != st.st_mtime:
            try:
                d = json.loads(p.read_text())
                d = d if isinstance(d, dict) and "auc" in d and "pairs" in d else None
            except (OSError, ValueError):
                d = None
            hit = (st.st_mtime, d)
            _bench_cache[str(p)] = hit
        d = hit[1]
        if d is None:
            continue
        plots = [Path(x).name for x in (d.get("plots") or []) if isinstance(x, str)]
        if not plots:
            plots = [f"{p.stem}_hist.png", f"{p.stem}_roc.png"]
        plots = [n for n in plots if re.fullmatch(r"[A-Za-z0-9._-]+\.png", n) and (folder / n).is_file()]
        summary = {k: d.get(k) for k in ("pairs", "same_source_pairs", "different_source_pairs", "auc",
                                         "auc_cmc_count", "eer", "errors_at_6", "false_positives_at_6",
                                         "false_negatives_at_6", "km_cmc_min", "km_cmc_median", "knm_cmc_max",
                                         "algorithm", "rotate_random") if k in d}
        lr = d.get("likelihood_ratio") if isinstance(d.get("likelihood_ratio"), dict) else None
        runs.append({"name": p.stem, "mtime": dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc),
                     "summary": summary, "plots": plots, "lr": lr})
    runs.sort(key=lambda r: r["mtime"], reverse=True)
    return runs


def _series_view(session) -> tuple[list[dict], list[dict]]:
    """The series (api.services.graph.confirmed_graph, as GET /v1/series) as plain list rows and graph panels."""
    rows, panels = [], []
    for exhibits, links in confirmed_graph(session).series():
        if len(exhibits) < 2:
            continue
        dates = [e.recovery_date for e in exhibits if e.recovery_date]
        rows.append({"id": f"S{exhibits[0].id}", "n_exhibits": len(exhibits), "hits": len(links),
                     "cases": sorted({(e.case.agency, e.case.case_number) for e in exhibits}),
                     "first": min(dates) if dates else None, "last": max(dates) if dates else None,
                     "places": sorted({e.place_text for e in exhibits if e.place_text}),
                     "serials": sorted({e.firearm_serial for e in exhibits if e.firearm_serial})})
        panels.append({"id": f"S{exhibits[0].id}",
                       "nodes": [{"id": e.id, "label": f"{e.case.case_number}/{e.exhibit_ref}",
                                  "case": f"{e.case.agency}/{e.case.case_number}"} for e in exhibits],
                       "edges": [{"a": c.exhibit_a_id, "b": c.exhibit_b_id, "cmc": c.cmc_count, "candidate_id": c.id}
                                 for c in links]})
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["n_exhibits"], rows[i]["id"]))
    return [rows[i] for i in order], [panels[i] for i in order]


#: database URL -> (feed head, series rows, graph panels). Exact: the set of live confirmations changes
#: only together with a feed event (a hit or a retraction), and exhibits are write-once.
_series_cache: dict[str, tuple[tuple[int, int], list[dict], list[dict]]] = {}


def series_cached(rt, session) -> tuple[list[dict], list[dict]]:
    head = tuple(session.execute(select(func.coalesce(func.max(HitEvent.seq), 0), func.count(HitEvent.seq))).one())
    key = str(rt.settings.database_url)
    hit = _series_cache.get(key)
    if hit is not None and hit[0] == head:
        return hit[1], hit[2]
    rows, panels = _series_view(session)
    _series_cache[key] = (head, rows, panels)
    return rows, panels


@router.get("/web/dashboard")
def dashboard(request: Request, bench: Annotated[Optional[str], Query(max_length=200)] = None) -> Response:
    ws, deny = _gate(request, "intel:read")
    if deny:
        return deny
    rt = request.app.state.runtime
    with rt.read_factory() as s:
        events = s.execute(select(HitEvent.created_at, HitEvent.kind).order_by(HitEvent.seq)).all()
        recent = s.execute(select(HitEvent).order_by(HitEvent.seq.desc()).limit(10)).scalars().unique().all()
        series, panels = series_cached(rt, s)
        n_exhibits = s.execute(select(func.count(Exhibit.id))).scalar_one()
        n_cases = s.execute(select(func.count(Case.id))).scalar_one()
    unit, buckets = charts.bucket_hits([(t, k) for t, k in events], today=dt.datetime.now(dt.timezone.utc).date())
    n_hits = sum(1 for _, k in events if k == "hit")
    n_retr = len(events) - n_hits
    folder = bench_dir()
    runs = _bench_runs(folder) if folder and folder.is_dir() else []
    current = next((r for r in runs if r["name"] == bench), runs[0] if runs else None)
    root = _root(request)
    return _page(request, ws, "dashboard.html", {
        "hits_svg": charts.hits_over_time_svg(unit, buckets), "n_hits": n_hits, "n_retr": n_retr,
        "recent": recent, "series": series[:200], "n_series": len(series),
        "graph_svg": charts.series_graph_svg(panels[:24], link_exhibits=ws.can("evidence:read"), root=root),
        "n_exhibits": n_exhibits, "n_cases": n_cases, "bench_folder": folder, "bench_env": BENCH_DIR_ENV,
        "runs": runs, "current": current})


@router.get("/web/dashboard/bench/{name}")
def bench_plot(request: Request, name: str) -> Response:
    ws, deny = _gate(request, "intel:read")
    if deny:
        return deny
    folder = bench_dir()
    if folder is None or not re.fullmatch(r"[A-Za-z0-9._-]+\.png", name) or not (folder / name).is_file():
        return _not_found(request, ws, "Plot")
    return _harden(FileResponse(folder / name, media_type="image/png",
                                headers={"Cache-Control": "private, max-age=60"}))


@router.get("/web/hits")
def hits_page(request: Request, after: Annotated[Optional[str], Query(max_length=100)] = None) -> Response:
    ws, deny = _gate(request, "intel:read")
    if deny:
        return deny
    rt = request.app.state.runtime
    with rt.read_factory() as s:
        try:
            feed = hits_feed(s, after=after, limit=100).feed
        except ServiceError as err:
            return _page(request, ws, "error.html", {"code": err.status, "title": "Bad cursor",
                                                     "message": str(err.detail)}, status_code=err.status)
    return _page(request, ws, "hits.html", {"feed": feed, "after": after})

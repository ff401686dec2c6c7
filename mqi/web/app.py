"""The dashboard's routes: pages, the live fragments htmx polls, actions, downloads, JSON, metrics.

Every request opens its own :mod:`mqi.api` session (SQLite connections stay in their
thread) and reads the store only; retry and cancel go through the API like the CLI's.
"""

from __future__ import annotations

import contextlib
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from mqi import api
from mqi.config import Config
from mqi.errors import MqiError
from mqi.store import CASE_STATUSES, NotFoundError
from mqi.web import metrics
from mqi.web.security import CSRF_FIELD, Guard, csrf_ok, csrf_token, set_csrf_cookie

HERE = Path(__file__).parent
PAGE_SIZE = 50
RETRYABLE = frozenset({"failed", "cancelled"})
CANCELLABLE = frozenset({"new", "submitting", "submitted", "running", "postprocessing"})
_DONE_MESSAGES = {
    "retried": "Retry submitted: the failed beams and a new post job are queued.",
    "cancelled": "Cancel sent: the case's unfinished jobs were cancelled.",
}


def local_time(value: str | None) -> str:
    """A stored ``...Z`` time as the workstation's local time (people see local time)."""
    if not value:
        return ""
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return value
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["local"] = local_time
    env.filters["duration"] = duration
    return Jinja2Templates(env=env)


class Dashboard:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.templates = _templates()

    @contextlib.contextmanager
    def session(self) -> Iterator[api.Session]:
        with api.open(self.config) as session:
            yield session

    # -- rendering helpers

    def page(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        with self.session() as session:
            health = session.poll_health()
        base = {
            "request": request,
            "health": health,
            "refresh": self.config.web.refresh_seconds,
            "csrf": csrf_token(request),
            "csrf_field": CSRF_FIELD,
        }
        response = self.templates.TemplateResponse(request, name, {**base, **context}, status_code=status)
        set_csrf_cookie(request, response)
        return response

    def fragment(self, request: Request, name: str, context: dict[str, Any]) -> Response:
        base = {"request": request, "refresh": self.config.web.refresh_seconds, "csrf_field": CSRF_FIELD}
        return self.templates.TemplateResponse(request, name, {**base, **context})

    # -- the case list

    def _case_query(self, request: Request) -> dict[str, Any]:
        params = request.query_params
        status = params.get("status") or None
        if status not in CASE_STATUSES:
            status = None
        try:
            offset = max(0, int(params.get("offset", "0")))
        except ValueError:
            offset = 0
        return {
            "status": status,
            "created_from": _date(params.get("from")),
            "created_to": _date(params.get("to")),
            "search": (params.get("q") or "").strip()[:100] or None,
            "limit": PAGE_SIZE,
            "offset": offset,
        }

    def _case_list_context(self, request: Request) -> dict[str, Any]:
        query = self._case_query(request)
        with self.session() as session:
            page = session.cases_page(**query)
        filters = {
            "status": query["status"] or "",
            "from": query["created_from"] or "",
            "to": query["created_to"] or "",
            "q": query["search"] or "",
        }
        kept = {k: v for k, v in filters.items() if v}
        offset = query["offset"]
        return {
            "page": page,
            "filters": filters,
            "statuses": CASE_STATUSES,
            "query_string": urlencode({**kept, "offset": offset} if offset else kept),
            "prev_link": urlencode({**kept, "offset": max(0, offset - PAGE_SIZE)}) if offset > 0 else None,
            "next_link": urlencode({**kept, "offset": offset + PAGE_SIZE})
            if offset + PAGE_SIZE < page["total"]
            else None,
            "retryable": RETRYABLE,
        }

    def cases(self, request: Request) -> Response:
        return self.page(request, "cases.html", self._case_list_context(request))

    def case_rows(self, request: Request) -> Response:
        return self.fragment(request, "_cases_table.html", self._case_list_context(request))

    # -- one case

    def _case_context(self, case_id: str) -> dict[str, Any]:
        with self.session() as session:
            case = session.status(case_id)
            history = session.history(case_id)["events"]
            try:
                _root, files = session.result_files(case_id)
            except NotFoundError:
                files = []
        return {
            "case": case,
            "events": history,
            "files": files,
            "can_retry": case["status"] in RETRYABLE,
            "can_cancel": case["status"] in CANCELLABLE,
        }

    def case(self, request: Request) -> Response:
        case_id = request.path_params["case_id"]
        context = self._case_context(case_id)
        done = request.query_params.get("done")
        context["message"] = _DONE_MESSAGES.get(done or "")
        context["error"] = None
        return self.page(request, "case.html", context)

    def case_live(self, request: Request) -> Response:
        context = self._case_context(request.path_params["case_id"])
        return self.fragment(request, "_case_live.html", context)

    async def act(self, request: Request) -> Response:
        case_id = request.path_params["case_id"]
        action = request.url.path.rsplit("/", 1)[-1]
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        if not csrf_ok(request, form):
            return PlainTextResponse("403: missing or wrong CSRF token; reload the page and try again", 403)
        try:
            await run_in_threadpool(self._act, case_id, action)
        except NotFoundError:
            raise
        except MqiError as error:
            context = await run_in_threadpool(self._case_context, case_id)
            context.update(message=None, error=f"{action} failed: {error}")
            return await run_in_threadpool(self.page, request, "case.html", context, 409)
        done = "retried" if action == "retry" else "cancelled"
        return RedirectResponse(f"/cases/{case_id}?done={done}", status_code=303)

    def _act(self, case_id: str, action: str) -> None:
        with self.session() as session:
            if action == "retry":
                session.retry(case_id)
            else:
                session.cancel(case_id)

    # -- downloads

    def results_zip(self, request: Request) -> Response:
        case_id = request.path_params["case_id"]
        with self.session() as session:
            root, names = session.result_files(case_id)
        spool = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)  # noqa: SIM115 (closed by chunks())
        with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for name in names:
                archive.write(root / name, f"{case_id}/{name}")
        spool.seek(0)

        def chunks() -> Iterator[bytes]:
            with spool:
                while chunk := spool.read(1024 * 1024):
                    yield chunk

        headers = {"content-disposition": f'attachment; filename="{case_id}.zip"'}
        return StreamingResponse(chunks(), media_type="application/zip", headers=headers)

    def result_file(self, request: Request) -> Response:
        case_id = request.path_params["case_id"]
        with self.session() as session:
            path = session.result_file(case_id, request.path_params["path"])
        inline = path.suffix.lower() in (".pdf", ".png", ".json", ".txt", ".log")
        return FileResponse(path, content_disposition_type="inline" if inline else "attachment")

    # -- the queue and the banner

    def _queue_context(self) -> dict[str, Any]:
        with self.session() as session:
            return {"queue": session.queue_snapshot()}

    def queue(self, request: Request) -> Response:
        return self.page(request, "queue.html", self._queue_context())

    def queue_live(self, request: Request) -> Response:
        return self.fragment(request, "_queue_table.html", self._queue_context())

    def banner(self, request: Request) -> Response:
        with self.session() as session:
            health = session.poll_health()
        return self.fragment(request, "_banner.html", {"health": health})

    # -- machines

    def api_cases(self, request: Request) -> Response:
        with self.session() as session:
            return JSONResponse(session.cases_page(**self._case_query(request)))

    def api_case(self, request: Request) -> Response:
        with self.session() as session:
            return JSONResponse({"schema": "mqi.status/1", **session.status(request.path_params["case_id"])})

    def api_history(self, request: Request) -> Response:
        with self.session() as session:
            return JSONResponse(session.history(request.path_params["case_id"]))

    def api_queue(self, request: Request) -> Response:
        with self.session() as session:
            return JSONResponse(session.queue_snapshot())

    def api_health(self, request: Request) -> Response:
        with self.session() as session:
            return JSONResponse({"schema": "mqi.health/1", **session.poll_health()})

    def metrics(self, request: Request) -> Response:
        with self.session() as session:
            snapshot = session.metrics_snapshot()
        return Response(metrics.render(snapshot), media_type=metrics.CONTENT_TYPE)


def _date(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").strftime("%Y-%m-%d")
    except ValueError:
        return None


def create_app(config: Config) -> Starlette:
    """The dashboard app for this config (uvicorn serves it; tests may call it directly)."""
    board = Dashboard(config)

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, status_code=404)
        return PlainTextResponse(f"404: {exc}", status_code=404)

    async def home(request: Request) -> Response:
        return RedirectResponse("/cases", status_code=303)

    routes = [
        Route("/", home),
        Route("/cases", board.cases),
        Route("/cases/rows", board.case_rows),
        Route("/cases/{case_id}", board.case),
        Route("/cases/{case_id}/live", board.case_live),
        Route("/cases/{case_id}/retry", board.act, methods=["POST"], name="retry"),
        Route("/cases/{case_id}/cancel", board.act, methods=["POST"], name="cancel"),
        Route("/cases/{case_id}/results.zip", board.results_zip),
        Route("/cases/{case_id}/files/{path:path}", board.result_file),
        Route("/queue", board.queue),
        Route("/queue/live", board.queue_live),
        Route("/banner", board.banner),
        Route("/metrics", board.metrics),
        Route("/api/cases", board.api_cases),
        Route("/api/cases/{case_id}", board.api_case),
        Route("/api/cases/{case_id}/history", board.api_history),
        Route("/api/queue", board.api_queue),
        Route("/api/health", board.api_health),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, web=config.web)],
        exception_handlers={NotFoundError: not_found},
    )


def app_from_environment() -> Starlette:
    """The app for the config ``$MQI_CONFIG`` names (uvicorn's factory, used by `mqi serve`)."""
    from mqi.config import load_config

    return create_app(load_config())

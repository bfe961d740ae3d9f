"""The simulated Pixazo gateway origin: submit, universal status, auth, rate limit and faults."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from pixazo_batch.models import MODEL_ID, SUBMIT_PATH, GenerationRequest, RemoteStatus
from pixazo_batch.sim.images import ImageFetcher
from pixazo_batch.sim.jobs import SimJob, status_body
from pixazo_batch.sim.state import KEY_HEADER, SimState
from pixazo_batch.sim.webhooks import WebhookSender

_ENUMS = {
    "aspect_ratio": ("16:9", "9:16", "4:3", "3:4", "21:9", "9:21"),
    "resolution": ("540p", "720p", "1080p"),
    "duration": ("5s", "9s"),
}
_APIM_401_MISSING = (
    "Access denied due to missing subscription key. Make sure to include subscription key "
    "when making requests to an API."
)
_APIM_401_INVALID = (
    "Access denied due to invalid subscription key. Make sure to provide a valid key for an "
    "active subscription."
)


def _service_error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


def _front_error(status: int, message: str, **extra: str) -> web.Response:
    return web.json_response({"statusCode": status, "message": message, **extra}, status=status)


def _is_http_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://")) and "." in value


def validate_body(data: Any) -> GenerationRequest | str:
    """The request the service would run, or the 400 message naming the offending field."""
    if not isinstance(data, dict):
        return "Request body must be a JSON object"
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt: is required and must be a non-empty string"
    if not 3 <= len(prompt) <= 5000:
        return "prompt: must be between 3 and 5000 characters"
    if not _is_http_url(data.get("image_url")):
        return "image_url: must be a valid HTTP/HTTPS URL to a JPEG, PNG or WebP image"
    end = data.get("end_image_url", "")
    if end not in ("", None) and not _is_http_url(end):
        return "end_image_url: must be empty or a valid HTTP/HTTPS URL"
    for name, allowed in _ENUMS.items():
        if name in data and data[name] not in allowed:
            return f"{name}: must be one of {', '.join(allowed)}"
    if "loop" in data and not isinstance(data["loop"], bool):
        return "loop: must be a boolean"
    known = {k: v for k, v in data.items() if k in GenerationRequest.model_fields}
    known["end_image_url"] = known.get("end_image_url") or ""
    return GenerationRequest.model_validate(known)


def _foreign_answer(kind: str) -> web.Response:
    """What a CDN or proxy in front of the gateway may answer after forwarding a submit."""
    if kind == "524-html":
        page = "<html><body><h1>Error 524</h1>A timeout occurred</body></html>"
        return web.Response(status=524, text=page, content_type="text/html")
    if kind == "503-html":
        page = "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
        return web.Response(status=503, text=page, content_type="text/html")
    if kind == "408":
        return web.Response(status=408, text="Request Timeout", content_type="text/plain")
    return web.json_response({"status": "QUEUED"}, status=200)


class GatewayApp:
    """Handlers of the gateway origin; ``routes()`` mounts them."""

    def __init__(self, state: SimState, webhooks: WebhookSender, images: ImageFetcher) -> None:
        self.state = state
        self.webhooks = webhooks
        self.images = images
        self.media_base = ""

    def routes(self) -> web.RouteTableDef:
        """The documented routes plus the simulator's own ``/_sim`` controls."""
        routes = web.RouteTableDef()
        routes.post(SUBMIT_PATH)(self.submit)
        routes.get("/v2/requests/status/{request_id}")(self.status)
        routes.get("/_sim/stats")(self.stats)
        routes.post("/_sim/reset")(self.reset)
        return routes

    async def stats(self, request: web.Request) -> web.Response:
        """Counters for tests and benchmarks."""
        return web.json_response(self.state.stats.as_json(self.state.book))

    async def reset(self, request: web.Request) -> web.Response:
        """Forget all jobs and counters."""
        self.state.reset()
        return web.json_response({"reset": True})

    def _admit(self, request: web.Request) -> web.Response | None:
        """Auth and rate limit, as the API front applies them before the service sees anything."""
        scenario = self.state.scenario
        key = request.headers.get(KEY_HEADER)
        if not key:
            return _front_error(401, _APIM_401_MISSING)
        if key in scenario.quota_keys:
            return web.json_response(
                {
                    "statusCode": 403,
                    "message": "Out of call volume quota. Quota will be replenished in 00:00:42.",
                },
                status=403,
                headers={"Retry-After": "42"},
            )
        if key in scenario.forbidden_keys:
            return _front_error(403, "Forbidden")
        if key not in scenario.keys:
            return _front_error(401, _APIM_401_INVALID)
        return self.state.rate_limit(key)

    async def submit(self, request: web.Request) -> web.StreamResponse:
        """``POST /{model}/v1/{model}-request``: validate, charge, queue; or fail as told."""
        state = self.state
        state.stats.submit_requests += 1
        raw = await request.read()
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        checked = validate_body(data)
        if not isinstance(checked, str):
            state.stats.arrived_by_hash[checked.request_hash()] += 1
        await state.pause(state.scenario.response_delay)
        refusal = self._admit(request)
        if refusal is not None:
            return refusal
        if state.scenario.model_disabled:
            message = f"Model '{MODEL_ID}' not found or is disabled"
            return _service_error(400, "Model not found", message)
        if data is None:
            return _service_error(400, "Bad Request", "Request body is not valid JSON")
        if isinstance(checked, str):
            return _service_error(400, "Bad Request", checked)
        webhook = self._webhook(request)
        if isinstance(webhook, web.Response):
            return webhook
        now = state.now()
        if not state.book.can_afford(now, checked.price_cents):
            return _service_error(
                402, "Insufficient Balance", "Your wallet does not have enough balance."
            )
        if state.draw("submit_refused", state.scenario.submit_refused_rate):
            return _service_error(500, "Internal Server Error", "The request could not be queued")
        job = state.book.accept(checked, now, checked.request_hash())
        state.remember(job)
        state.stats.accepted += 1
        state.stats.accepted_by_hash[job.request_hash] += 1
        if webhook is not None:
            job.webhook_url, job.webhook_mode = webhook
            self.webhooks.schedule(job)
        if state.scenario.fetch_images:
            self.images.schedule(job)
        lost = await self._lose_answer(request)
        if lost is not None:
            return lost
        polling_url = {
            "absolute": f"{request.url.origin()}/v2/requests/status/{job.request_id}",
            "relative": f"/v2/requests/status/{job.request_id}",
            "malformed": "http://[::1",
        }[state.scenario.polling_url_form]
        body = {"request_id": job.request_id, "status": "QUEUED", "polling_url": polling_url}
        return web.json_response(body, status=202)

    async def _lose_answer(self, request: web.Request) -> web.Response | None:
        """The faults that hide an accepted job's answer (the double-charge traps), if one
        strikes: a reset, an intermediary's page, or the API front's 504/500 after a delay."""
        state = self.state
        if state.draw("submit_reset", state.scenario.submit_reset_rate):
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if state.draw("submit_foreign", state.scenario.submit_foreign_rate):
            return _foreign_answer(state.scenario.submit_foreign_kind)
        if state.draw("submit_lost", state.scenario.submit_lost_answer_rate):
            await state.pause(state.scenario.seconds(state.scenario.lost_answer_delay))
            if state.stats.faults["submit_lost"] % 2:
                return _front_error(504, "Gateway Timeout")
            return _front_error(500, "Internal server error", activityId=str(uuid.uuid4()))
        return None

    def _webhook(self, request: web.Request) -> tuple[str, str] | web.Response | None:
        url = request.headers.get("X-Webhook-URL")
        if url is None:
            return None
        mode = request.headers.get("X-Webhook-Mode", "terminal")
        allowed = (
            ("https://", "http://") if self.state.scenario.webhook_allow_http else ("https://",)
        )
        if not url.startswith(allowed):
            return _service_error(400, "Bad Request", "X-Webhook-URL: must be an https URL")
        if mode not in ("terminal", "sync"):
            return _service_error(400, "Bad Request", "X-Webhook-Mode: must be terminal or sync")
        return url, mode

    async def status(self, request: web.Request) -> web.Response:
        """``GET /v2/requests/status/{id}``: the job's status as of the gateway's last tick."""
        state = self.state
        state.stats.status_requests += 1
        await state.pause(state.scenario.response_delay)
        refusal = self._admit(request)
        if refusal is not None:
            return refusal
        if state.draw("status_error", state.scenario.status_error_rate):
            return _front_error(500, "Internal server error", activityId=str(uuid.uuid4()))
        request_id = request.match_info["request_id"]
        job = state.book.jobs.get(request_id)
        if job is None:
            return _service_error(404, "Not Found", f"Request {request_id} not found")
        state.stats.polls_by_request[request_id] += 1
        return web.json_response(status_body(job, state.now(), self.media_url(job)))

    def media_url(self, job: SimJob) -> str | None:
        """The media URL to hand out for a completed job (None before completion)."""
        if job.status_at(self.state.now()) is not RemoteStatus.COMPLETED:
            return None
        generation = self.state.media_generation(job)
        return f"{self.media_base}/v1/{job.request_id}/output.mp4?v={generation}"

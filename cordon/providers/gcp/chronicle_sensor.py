"""The ``chronicle`` sensor: polls Google SecOps (Chronicle) detections (:mod:`cordon.sensors`).

API followed: SecOps v1alpha ``legacySearchDetections``
(https://cloud.google.com/chronicle/docs/reference/rest/v1alpha/projects.locations.instances.legacy/legacySearchDetections)::

    GET {base}/v1alpha/projects/{project}/locations/{region}/instances/{instance}/legacy:legacySearchDetections
        ?ruleId=-&listBasis=CREATED_TIME&startTime=RFC3339&endTime=RFC3339&pageSize=N[&alertState=..][&pageToken=..]
    -> {"detections": [detection, ...], "nextPageToken"?: str, "respTooLargeDetectionsTruncated"?: bool}

The path is ``.../instances/{instance}/legacy:legacySearchDetections`` (the ``legacy`` collection,
then the verb), as Google's ``secops`` SDK (``chronicle/rule_detection.py``) and its v1alpha
samples call it; ``base`` is ``https://{region}-chronicle.googleapis.com``. ``ruleId=-`` is every
rule. The detection objects are the shape documented in chronicle/api-samples-python
``detect/v2/stream_detection_alerts.py`` (the only sample under /work/shared: it streams
``/v2/detect/rules:streamDetectionAlerts``, a POST that never ends, which does not fit a polling
pass; the v1alpha search returns the same detection objects).

A log sensor (``kind = "poll"``) as ``entra-audit`` is: a pass reads the window from the watermark
minus ``overlap_seconds`` (detections are created minutes after the events: multi-event rules run
on a schedule) to now, at most ``max_window_seconds`` of it, every page of it, and only then
returns them with the window's end as the new watermark. A page that fails (HTTP error, a body
that is not JSON or has no detection list) raises, so the runner records the error and keeps the
old watermark: the next pass reads the window again. Detections read again (the overlap, a
retried window) are dropped by the framework's seen IDs, keyed ``{id}@{ruleVersion}``: a new rule
version of the same detection is delivered again. ``listBasis`` defaults to ``CREATED_TIME`` so a
detection created late for an old detection time is still inside a window.

Credentials: ``google-auth``'s :class:`~google.auth.transport.requests.AuthorizedSession` over
``credentials_file`` (a service-account JSON key) when set, else the GCP provider's credentials
(``google.auth.default()``, or the sandbox's service account in a rehearsal), scope
``cloud-platform``. The ``secops`` SDK (0.44.1 on the index) is not used: the sensor needs one GET,
the SDK's ``list_detections`` builds its own session and URL (no base URL to point at a stand-in,
no timeout), and it would add a dependency tree beside our pins for that one call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field, field_validator

from cordon.providers.gcp.chronicle import chronicle_records, detection_key
from cordon.sensors import Delivery, Fetched, Sensor, SensorSettings, records_of, register_sensor
from cordon.sensors.store import SensorState

log = logging.getLogger("cordon.sensors.chronicle")

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class ChronicleError(RuntimeError):
    """A ``legacySearchDetections`` page could not be read (HTTP error, not JSON, wrong shape)."""


class ChronicleSettings(SensorSettings):
    """``sensors.chronicle``: the SecOps instance ``project`` (GCP project ID, required),
    ``region`` (``us``, ``europe``, ``asia-southeast1``...; default ``us``), ``instance`` (the
    SecOps customer ID, required), ``base_url`` (default ``https://{region}-chronicle.googleapis.com``),
    ``credentials_file`` (a service-account JSON key; default: the GCP provider's credentials),
    ``rule_id`` (default ``-``: every rule), ``list_basis`` (``CREATED_TIME`` or
    ``DETECTION_TIME``), ``alert_state`` (``ALERTING`` / ``NOT_ALERTING``; default both),
    ``page_size`` (1-1000, default 100), ``overlap_seconds`` (600), ``start_lookback_seconds``
    (3600), ``max_window_seconds`` (900) and ``timeout_seconds`` of one request (30)."""

    project: str = Field(min_length=1)
    instance: str = Field(min_length=1)
    region: str = "us"
    base_url: str | None = None
    credentials_file: str | None = None
    rule_id: str = Field(default="-", min_length=1)
    list_basis: Literal["CREATED_TIME", "DETECTION_TIME"] = "CREATED_TIME"
    alert_state: Literal["ALERTING", "NOT_ALERTING"] | None = None
    page_size: int = Field(default=100, ge=1, le=1000)
    overlap_seconds: float = Field(default=600.0, ge=0)
    start_lookback_seconds: float = Field(default=3600.0, gt=0)
    max_window_seconds: float = Field(default=900.0, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", v):
            raise ValueError(f"not a SecOps region: {v!r} (e.g. us, europe, asia-southeast1)")
        return v

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"https?://[^/]+", v):
            raise ValueError(f"not an http(s) URL: {v!r}")
        return v.rstrip("/") if v else v

    @field_validator("credentials_file")
    @classmethod
    def _credentials_file(cls, v: str | None) -> str | None:
        if v is not None and not os.path.isfile(os.path.expanduser(v)):
            raise ValueError(f"no such file: {v!r}")
        return v

    @property
    def instance_name(self) -> str:
        """``projects/{project}/locations/{region}/instances/{instance}``."""
        return f"projects/{self.project}/locations/{self.region}/instances/{self.instance}"

    @property
    def search_url(self) -> str:
        """The ``legacySearchDetections`` URL of the instance."""
        base = self.base_url or f"https://{self.region}-chronicle.googleapis.com"
        return f"{base}/v1alpha/{self.instance_name}/legacy:legacySearchDetections"


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@register_sensor
class ChronicleSensor(Sensor):
    """Poll Google SecOps rule detections (module docstring). Needs
    ``chronicle.legacies.legacySearchDetections`` on the instance (``roles/chronicle.viewer``)."""

    name = "chronicle"
    title = "Google SecOps (Chronicle) rule detections, polled through legacySearchDetections"
    provider = "gcp"
    kind = "poll"
    settings_model = ChronicleSettings
    permissions = ("chronicle.legacies.legacySearchDetections",)
    settings: ChronicleSettings

    def __init__(self, settings: ChronicleSettings, clients: Any):
        super().__init__(settings, clients)
        self._session: Any = None

    def session(self) -> Any:
        """The :class:`google.auth.transport.requests.AuthorizedSession` (built once): from
        ``credentials_file``, else the provider clients' ``credentials``, else
        ``google.auth.default()``. Raises ``google.auth.exceptions.DefaultCredentialsError``
        without any."""
        if self._session is None:
            from google.auth.transport.requests import AuthorizedSession

            if self.settings.credentials_file:
                from google.oauth2 import service_account

                creds: Any = service_account.Credentials.from_service_account_file(
                    os.path.expanduser(self.settings.credentials_file), scopes=[CLOUD_PLATFORM_SCOPE])
            else:
                creds = getattr(self.clients, "credentials", None)
                if creds is None:
                    import google.auth

                    creds, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            self._session = AuthorizedSession(creds)
        return self._session

    def window(self, state: SensorState, now: datetime) -> tuple[datetime, datetime]:
        """``(since, until)`` of this pass, aware UTC (module docstring)."""
        s = self.settings
        start = (state.watermark - timedelta(seconds=s.overlap_seconds)) if state.watermark \
            else now - timedelta(seconds=s.start_lookback_seconds)
        end = min(now, (state.watermark or start) + timedelta(seconds=s.max_window_seconds))
        return start, max(end, start)

    def search(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        """Every detection of ``[since, until)`` on the list basis, all pages followed
        (``pageToken`` = the previous page's ``nextPageToken``, the other parameters unchanged).
        Raises :class:`ChronicleError` for a page that fails (HTTP status >= 400, a body that is
        not JSON, no ``detections`` list) and ``requests.RequestException`` for the transport."""
        s = self.settings
        params: dict[str, Any] = {"ruleId": s.rule_id, "listBasis": s.list_basis, "startTime": _rfc3339(since),
                                  "endTime": _rfc3339(until), "pageSize": s.page_size}
        if s.alert_state:
            params["alertState"] = s.alert_state
        out: list[dict[str, Any]] = []
        token, page = None, 0
        while True:
            page += 1
            resp = self.session().get(s.search_url, params={**params, **({"pageToken": token} if token else {})},
                                      timeout=s.timeout_seconds)
            if resp.status_code >= 400:
                raise ChronicleError(f"legacySearchDetections page {page}: HTTP {resp.status_code}: "
                                     f"{resp.text[:300]}")
            try:
                body = resp.json()
            except ValueError:
                raise ChronicleError(f"legacySearchDetections page {page}: not JSON: {resp.text[:120]!r}") from None
            if not isinstance(body, dict) or not isinstance(body.get("detections", []), list):
                raise ChronicleError(f"legacySearchDetections page {page}: no detections list")
            if body.get("respTooLargeDetectionsTruncated"):
                log.warning("chronicle: page %d truncated by the server (respTooLargeDetectionsTruncated); "
                            "lower page_size", page)
            # proto3 JSON leaves out an empty list: a page without detections has no "detections"
            out.extend(d for d in chronicle_records(body.get("detections") or []) if isinstance(d, dict))
            token = body.get("nextPageToken")
            if not token:
                return out

    def fetch(self, state: SensorState, now: datetime) -> Fetched:
        """Every detection of this pass's window (:meth:`window`, :meth:`search`), oldest first,
        each one :class:`Delivery` (``record_id`` ``{id}@{ruleVersion}``, ``body`` the detection
        object as JSON, ``at`` its ``detectionTime``); the watermark is the window's end. A
        detection without ``id`` or ``detection[0]`` is delivered too, keyed by the SHA-256 of its
        body, for the intake to dead-letter naming the field (once: the key is then seen; a
        sensor-side rejection would be dead-lettered again by every overlapping pass)."""
        since, until = self.window(state, now)
        origin = f"chronicle:{self.settings.instance_name}"
        out = []
        for det in self.search(since, until):
            body = json.dumps(det, separators=(",", ":")).encode()
            rules = det.get("detection")
            whole = isinstance(det.get("id"), str) and det["id"] and isinstance(rules, list) and rules \
                and isinstance(rules[0], dict)
            # a malformed one by its body: detection_key would give every id-less one the same key
            rid = detection_key(det) if whole else f"sha256:{hashlib.sha256(body).hexdigest()}"
            out.append(Delivery(record_id=rid, origin=origin, body=body, at=_time(det.get("detectionTime"))))
        out.sort(key=lambda d: d.at.timestamp() if d.at else 0.0)  # oldest first, as they happened
        return Fetched(deliveries=out, watermark=until)

    @classmethod
    def rehearse(cls, stand_in: Any, inputs: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Load the inputs' detection objects (pages, lists, single objects, JSON lines) into the
        GCP sandbox's SecOps stand-in (``stand_in.chronicle()``: started beside the sandbox and
        stopped with it; it takes the bearer tokens of the sandbox's token endpoint) and return
        settings pointing at it that look back far enough to read the oldest. Raises
        ``NotImplementedError`` for a stand-in without one."""
        if not hasattr(stand_in, "chronicle"):
            raise NotImplementedError("the GCP stand-in has no SecOps (Chronicle) stand-in")
        dets = [d for _path, data in inputs for r in records_of(data) for d in chronicle_records(r)
                if isinstance(d, dict)]
        chronicle = stand_in.chronicle()
        chronicle.add_detections(*dets)
        times = [t for t in (_time(d.get("createdTime") or d.get("detectionTime")) for d in dets) if t is not None]
        back = max((datetime.now(UTC) - min(times)).total_seconds() + 60 if times else 3600.0, 60.0)
        return {"base_url": chronicle.url, "project": getattr(stand_in, "project", "cordon-sandbox"),
                "region": "us", "instance": "cordon-rehearsal", "start_lookback_seconds": back,
                "max_window_seconds": back + 60, "page_size": 100}

"""Push generated dashboards to Grafana over its HTTP API.

Only the documented endpoints: `GET/POST /api/folders` and `POST /api/dashboards/db`.
TLS verification stays on (point REQUESTS_CA_BUNDLE at a private CA if needed) and
every request has a timeout, so a hung Grafana cannot hang a deploy pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

# (connect, read) seconds. Saving a large dashboard is the slowest call we make.
TIMEOUT = (5.0, 30.0)


class UploadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Auth:
    token: str = ""
    user: str = ""
    password: str = ""

    def apply(self, session: requests.Session) -> None:
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.user:
            session.auth = (self.user, self.password)
        else:
            raise UploadError("Grafana upload needs --grafana-token or --grafana-user/"
                              "--grafana-password")


def folder_uid_for(title: str) -> str:
    """A stable uid for a folder we create, so reruns and other Grafanas agree on it."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return (slug or "celery")[:40]


class Grafana:
    def __init__(self, url: str, auth: Auth, *, session: requests.Session | None = None
                 ) -> None:
        if not re.match(r"^https?://", url):
            raise UploadError(f"--upload: expected an http(s) URL, got {url!r}")
        self.base = url.rstrip("/")
        self.session = session or requests.Session()
        self.session.headers.update({"Accept": "application/json",
                                     "Content-Type": "application/json"})
        self.session.verify = True
        auth.apply(self.session)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            resp = self.session.request(method, self.base + path, json=body, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise UploadError(f"{method} {path}: {exc.__class__.__name__}: {exc}") from None
        if resp.status_code >= 400:
            # Grafana puts its reason in "message"; never echo our request (it has the
            # dashboard and, for basic auth, nothing secret, but keep errors short).
            detail = resp.text[:300]
            raise UploadError(f"{method} {path}: HTTP {resp.status_code}: {detail}")
        try:
            return resp.json()
        except ValueError:
            raise UploadError(f"{method} {path}: response is not JSON") from None

    def ensure_folder(self, title: str) -> str:
        """The uid of the folder titled `title`, created if missing."""
        for folder in self._call("GET", "/api/folders?limit=1000") or []:
            if folder.get("title") == title:
                return str(folder["uid"])
        created = self._call("POST", "/api/folders",
                             {"uid": folder_uid_for(title), "title": title})
        return str(created["uid"])

    def put_dashboard(self, dashboard: Mapping[str, Any], folder_uid: str | None,
                      message: str = "celery-events-exporter dashboards") -> dict[str, Any]:
        body: dict[str, Any] = {
            # id must be null: Grafana matches on uid, and a foreign id would 404.
            "dashboard": {**dashboard, "id": None},
            "overwrite": True,
            "message": message,
        }
        if folder_uid:
            body["folderUid"] = folder_uid
        result: dict[str, Any] = self._call("POST", "/api/dashboards/db", body)
        return result


def upload(url: str, auth: Auth, dashboards: Mapping[str, Mapping[str, Any]],
           folder: str = "") -> list[str]:
    """Upload every dashboard; returns the Grafana URLs of the saved dashboards."""
    client = Grafana(url, auth)
    folder_uid = client.ensure_folder(folder) if folder else None
    urls = []
    for data in dashboards.values():
        result = client.put_dashboard(data, folder_uid)
        urls.append(client.base + str(result.get("url", "")))
    return urls

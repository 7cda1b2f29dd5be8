"""Kubernetes API calls: a thin, path-based JSON client on the official client's transport.

The one Kubernetes client of the package: ``thpcheck operator``, ``thpcheck preflight`` and
``thpcheck uninstall-cleanup`` (the chart's pre-delete hook) all connect with
``Kube.connect``, which takes its credentials from ``thpcheck.controller.credentials`` in the
one documented order (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``, the in-cluster
service account); nothing else in the package builds an API client or loads a kubeconfig
(tests/unit/test_architecture.py holds that).

The official client does the authentication (kubeconfig, in-cluster token, exec plugins);
requests and responses stay plain dicts, skipping its model classes, which cost more CPU
than the calls themselves at thousands of nodes. Blocking calls run in a bounded thread
pool; with ``Metrics`` (the operator), every write is counted and every failure is counted by
verb (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes
import urllib3

from thpcheck.contract import names
from thpcheck.controller import credentials
from thpcheck.controller.credentials import transport_error
from thpcheck.controller.metrics import Metrics

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
JSON = "application/json"
REQUEST_TIMEOUT = (10.0, 60.0)  # connect, read
LIST_PAGE = 500  # items per page of a list
NODES_PATH = "/api/v1/nodes"


class ApiError(RuntimeError):
    """A failed API call; ``status`` is the HTTP status (0: no response)."""

    def __init__(self, verb: str, path: str, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{verb} {path}: {status} {reason}: {detail[:500]}")
        self.path = path
        self.status = status
        self.reason = reason
        self.detail = detail

    @property
    def message(self) -> str:
        """The API server's own message (a Status object's ``message``), else the text."""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            return str(json.loads(self.detail)["message"])
        return self.detail[:500] or f"{self.status} {self.reason}"


def _status_message(data: bytes) -> str:
    """The message of a metav1.Status error body (what a user reads), else the raw text."""
    text = data.decode(errors="replace") if data else ""
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(text).get("message")
        if isinstance(message, str) and message:
            return message
    return text


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """409: AlreadyExists on create, a stale resourceVersion on update."""


CHECKS_PATH = f"/apis/{names.GROUP}/{names.VERSION}/{names.CHECK_PLURAL}"


def _check_path(name: str) -> str:
    return f"{CHECKS_PATH}/{quote(name, safe='')}"


RESULTS_PATH = f"/apis/{names.GROUP}/{names.VERSION}/{names.RESULT_PLURAL}"


def _result_path(name: str = "") -> str:
    return f"{RESULTS_PATH}/{quote(name, safe='')}" if name else RESULTS_PATH


def pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods"


def daemonsets_path(namespace: str, name: str = "") -> str:
    base = f"/apis/apps/v1/namespaces/{quote(namespace, safe='')}/daemonsets"
    return f"{base}/{quote(name, safe='')}" if name else base


class Kube:
    """The API calls of every command, each a coroutine (``request_sync``: blocking)."""

    def __init__(self, client: kubernetes.client.ApiClient, metrics: Metrics | None = None,
                 workers: int = 16, source: credentials.Source | None = None) -> None:
        self.client = client
        self.metrics = metrics
        self.source = source  # where the credentials came from (for messages, kopf's login)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube-api")

    @classmethod
    def connect(cls, kubeconfig: str | None, metrics: Metrics | None = None, workers: int = 16,
                retries: int | None = None) -> Kube:
        """A client with the credentials of the documented order (``kubeconfig``: the
        ``--kubeconfig`` flag, if given); StartupError when none is usable. ``retries``: of
        a failed connection (urllib3's default when None; 1 fails fast on a wrong address)."""
        configuration, source = credentials.configuration(kubeconfig)
        configuration.connection_pool_maxsize = max(workers, 4)
        if retries is not None:
            configuration.retries = retries
        return cls(kubernetes.client.ApiClient(configuration), metrics, workers, source)

    def startup_error(self, exc: ApiError, doing: str) -> credentials.StartupError:
        """The one-line StartupError for a failed request made while ``doing`` (e.g. "list
        nodes"): the server unreachable, or its HTTP answer."""
        if exc.status == 0:
            return credentials.unreachable(self.server, exc.detail)
        return credentials.http_failure(exc.status, exc.detail, self.server, doing)

    def _count(self, counter: str, **labels: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, counter).labels(**labels).inc()

    @property
    def server(self) -> str:
        return str(self.client.configuration.host)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()  # type: ignore[no-untyped-call]

    # -- transport ---------------------------------------------------------------------

    def request_sync(self, verb: str, path: str, body: Any = None,
                     content_type: str = JSON, query: Mapping[str, str] | None = None,
                     resource: str = "") -> Any:
        """One blocking call; returns the decoded JSON body (None when empty)."""
        url_path = path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": JSON, "Content-Type": content_type}
        method, url, headers, payload, _ = self.client.param_serialize(
            verb, url_path, header_params=headers, body=body, auth_settings=["BearerToken"])
        if verb != "GET":
            self._count("api_writes", verb=verb, resource=resource)
        try:
            response = self.client.call_api(method, url, headers, payload,
                                            _request_timeout=REQUEST_TIMEOUT)
            data = response.read()  # type: ignore[no-untyped-call]
            response.response.release_conn()
        except (kubernetes.client.ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
            self._count("api_errors", verb=verb)
            raise ApiError(verb, path, 0, type(exc).__name__, transport_error(exc)) from exc
        if response.status >= 400:
            self._count("api_errors", verb=verb)
            detail = _status_message(data)
            kind = (NotFound if response.status == 404 else
                    Conflict if response.status == 409 else ApiError)
            raise kind(verb, path, response.status, response.reason or "", detail)
        return json.loads(data) if data else None

    @contextlib.contextmanager
    def stream_sync(self, path: str, query: Mapping[str, str],
                    read_timeout: float) -> Iterator[Iterator[bytes]]:
        """A GET whose body is read line by line as it arrives (a watch); ApiError as for
        ``request_sync``."""
        url_path = f"{path}?{urlencode(query)}"
        method, url, headers, payload, _ = self.client.param_serialize(
            "GET", url_path, header_params={"Accept": JSON}, auth_settings=["BearerToken"])
        try:
            response = self.client.call_api(method, url, headers, payload,
                                            _request_timeout=(REQUEST_TIMEOUT[0], read_timeout))
        except (kubernetes.client.ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
            self._count("api_errors", verb="WATCH")
            raise ApiError("WATCH", path, 0, type(exc).__name__, transport_error(exc)) from exc
        raw: urllib3.BaseHTTPResponse = response.response
        try:
            if response.status >= 400:
                self._count("api_errors", verb="WATCH")
                detail = raw.read().decode(errors="replace")
                raise ApiError("WATCH", path, response.status, response.reason or "", detail)
            try:
                yield iter(raw)
            except (OSError, urllib3.exceptions.HTTPError) as exc:
                raise ApiError("WATCH", path, 0, type(exc).__name__,
                               transport_error(exc)) from exc
        finally:
            raw.close()

    def list_sync(self, path: str, query: Mapping[str, str] | None = None,
                  page: int = LIST_PAGE) -> list[dict[str, Any]]:
        """Every item of a list (filtered by ``query``'s selectors), in pages of ``page``."""
        items: list[dict[str, Any]] = []
        following: dict[str, str] | None = {**(query or {}), "limit": str(page)}
        while following is not None:
            following = _next_page(self.request_sync("GET", path, query=following), following,
                                   items)
        return items

    async def request(self, verb: str, path: str, body: Any = None,
                      content_type: str = JSON, query: Mapping[str, str] | None = None,
                      resource: str = "") -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.pool, lambda: self.request_sync(verb, path, body, content_type, query,
                                                 resource))

    async def list_all(self, path: str, query: Mapping[str, str] | None = None,
                       page: int = LIST_PAGE, resource: str = "") -> list[dict[str, Any]]:
        """``list_sync`` for the event loop: each page is one ``request`` (counted, retried)."""
        items: list[dict[str, Any]] = []
        following: dict[str, str] | None = {**(query or {}), "limit": str(page)}
        while following is not None:
            found = await self.request("GET", path, query=following, resource=resource)
            following = _next_page(found, following, items)
        return items

    # -- ThpCheck ----------------------------------------------------------------------

    async def patch_check_status(self, name: str, patch: Mapping[str, Any]) -> Any:
        return await self.request("PATCH", _check_path(name) + "/status", patch, MERGE_PATCH,
                                  resource="thpchecks/status")

    async def check_names(self) -> set[str]:
        """The names of every ThpCheck the API holds now (deleting ones too); NotFound when
        the CRD is not installed."""
        listed = await self.request("GET", CHECKS_PATH, resource="thpchecks")
        return {item["metadata"]["name"] for item in listed.get("items") or ()}

    async def delete_check(self, name: str) -> bool:
        """Delete the ThpCheck (its finalizer then runs); False when it was already gone."""
        try:
            await self.request("DELETE", _check_path(name), resource="thpchecks")
        except NotFound:
            return False
        return True

    # -- ThpNodeResult -----------------------------------------------------------------

    async def create_result(self, body: Mapping[str, Any]) -> Any:
        return await self.request("POST", _result_path(), body, resource="thpnoderesults")

    async def replace_result(self, body: Mapping[str, Any]) -> Any:
        """Replace labels, annotations, owners and status in one JSON patch."""
        meta = body["metadata"]
        operations = [
            {"op": "add", "path": "/metadata/labels", "value": meta["labels"]},
            {"op": "add", "path": "/metadata/annotations", "value": meta["annotations"]},
            {"op": "add", "path": "/metadata/ownerReferences", "value": meta["ownerReferences"]},
            {"op": "add", "path": "/status", "value": body["status"]},
        ]
        return await self.request("PATCH", _result_path(meta["name"]), operations, JSON_PATCH,
                                  resource="thpnoderesults")

    async def patch_result(self, name: str, patch: Mapping[str, Any]) -> Any:
        return await self.request("PATCH", _result_path(name), patch, MERGE_PATCH,
                                  resource="thpnoderesults")

    async def delete_result(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            await self.request("DELETE", _result_path(name), resource="thpnoderesults")

    async def delete_results(self, check: str) -> None:
        """Every result of ``check``, in one call (GC would also do it, more slowly)."""
        selector = f"{names.CHECK_LABEL}={names.label_value(check)}"
        await self.request("DELETE", _result_path(), query={"labelSelector": selector},
                           resource="thpnoderesults")

    # -- Nodes -------------------------------------------------------------------------

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> Any:
        return await self.request("PATCH", f"/api/v1/nodes/{quote(name, safe='')}", patch,
                                  MERGE_PATCH, resource="nodes")

    async def patch_node_status(self, name: str, patch: Mapping[str, Any]) -> Any:
        """A strategic merge patch of the node's status: conditions merge by type, so only
        the condition named changes (the kubelet's own are left alone)."""
        return await self.request("PATCH", f"/api/v1/nodes/{quote(name, safe='')}/status",
                                  patch, STRATEGIC_MERGE_PATCH, resource="nodes/status")

    # -- DaemonSets --------------------------------------------------------------------

    async def create_daemonset(self, body: Mapping[str, Any]) -> Any:
        return await self.request("POST", daemonsets_path(body["metadata"]["namespace"]), body,
                                  resource="daemonsets")

    async def update_daemonset(self, body: Mapping[str, Any]) -> Any:
        """Replace the template, update strategy and annotations (the selector is fixed)."""
        meta = body["metadata"]
        operations: Sequence[Mapping[str, Any]] = [
            {"op": "add", "path": "/metadata/annotations", "value": meta["annotations"]},
            {"op": "add", "path": "/spec/template", "value": body["spec"]["template"]},
            {"op": "add", "path": "/spec/updateStrategy",
             "value": body["spec"]["updateStrategy"]},
        ]
        return await self.request("PATCH", daemonsets_path(meta["namespace"], meta["name"]),
                                  operations, JSON_PATCH, resource="daemonsets")

    async def get_daemonset(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The DaemonSet, or None when it does not exist."""
        try:
            found: dict[str, Any] = await self.request("GET", daemonsets_path(namespace, name))
        except NotFound:
            return None
        return found

    async def delete_daemonset(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            await self.request("DELETE", daemonsets_path(namespace, name),
                               {"propagationPolicy": "Background"}, resource="daemonsets")

    # -- Events ------------------------------------------------------------------------

    async def create_event(self, body: Mapping[str, Any]) -> Any:
        namespace = quote(body["metadata"]["namespace"], safe="")
        return await self.request("POST", f"/api/v1/namespaces/{namespace}/events", body,
                                  resource="events")

    async def list_events(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The Events in ``namespace`` matching the field ``selector`` (filtered by the API
        server), in pages."""
        return await self.list_all(f"/api/v1/namespaces/{quote(namespace, safe='')}/events",
                                   {"fieldSelector": selector})

    # -- Nodes and pods (read) -----------------------------------------------------------

    async def list_nodes(self, selector: str = "") -> list[dict[str, Any]]:
        return await self.list_all(NODES_PATH, {"labelSelector": selector} if selector else None)

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return await self.list_all(pods_path(namespace),
                                   {"labelSelector": selector})

    # -- start-up ----------------------------------------------------------------------

    def get_crd_sync(self, name: str) -> Any:
        """The CRD, or None when it is not installed."""
        try:
            return self.request_sync(
                "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        except NotFound:
            return None


def _next_page(found: Any, query: dict[str, str], items: list[dict[str, Any]]
               ) -> dict[str, str] | None:
    """Add a list page's items; the query for the next page, or None after the last."""
    page = found or {}
    items.extend(page.get("items") or [])
    token = (page.get("metadata") or {}).get("continue")
    return {**query, "continue": str(token)} if token else None

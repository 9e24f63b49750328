"""A snapshot of a running Triton server's per-version statistics and metrics: the online A/B's guardrails.

Per version of the student: requests that succeeded and failed (the statistics extension, counted since the
server started) and the request-duration quantiles (``nv_inference_request_summary_us``, which ``relkd``'s
launcher turns on with ``--metrics-config summary_latencies=true``; Triton computes them over a sliding window
of recent requests, so snapshot right after the traffic of interest). The router's own metrics (rows and
failures per arm) come along, so the analysis can check them against the exposure log.
"""
from __future__ import annotations

import json
import math
import re
import time

from relkd.serving.server import START_HINT, ServerUnreachable, _http_base, _request

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str, prefixes: tuple[str, ...]) -> list[dict]:
    """The samples of a Prometheus text exposition whose name starts with one of `prefixes`:
    [{name, labels, value}] (value a float; NaN kept as NaN)."""
    samples = []
    for line in text.splitlines():
        if not line.startswith(prefixes):
            continue
        m = _SAMPLE.match(line.strip())
        if m:
            name, labels, value = m.groups()
            samples.append({"name": name, "labels": dict(_LABEL.findall(labels or "")), "value": float(value)})
    return samples


def snapshot(http_url: str, metrics_url: str | None, model_name: str, timeout: float = 10.0) -> dict:
    """{taken_at, model, versions: {version: {success, fail, error_rate, p50_ms, p99_ms}}, router: [samples]}.

    `metrics_url` None (a server whose metrics port is not known): no quantiles and no router metrics."""
    base = _http_base(http_url)
    try:
        status, body = _request(f"{base}/v2/models/{model_name}/stats", timeout=timeout)
    except OSError as e:
        raise ServerUnreachable(f"no Triton server answers at {base} ({getattr(e, 'reason', e)}); {START_HINT}") from e
    if status != 200:
        raise ServerUnreachable(f"{base} answered HTTP {status} for the statistics of {model_name!r}: "
                                f"{body[:300].decode(errors='replace')}")
    versions = {}
    for s in json.loads(body).get("model_stats", []):
        inference = s.get("inference_stats", {})
        ok, fail = int(inference.get("success", {}).get("count", 0)), int(inference.get("fail", {}).get("count", 0))
        versions[str(s["version"])] = {"success": ok, "fail": fail,
                                       "error_rate": fail / (ok + fail) if ok + fail else None,
                                       "p50_ms": None, "p99_ms": None}
    router = []
    if metrics_url:
        try:
            _, text = _request(metrics_url, timeout=timeout)
        except OSError as e:
            raise ServerUnreachable(f"no metrics at {metrics_url} ({getattr(e, 'reason', e)}); pass the server's "
                                    "metrics URL (http://HOST:METRICS_PORT/metrics)") from e
        samples = parse_metrics(text.decode("utf-8", errors="replace"), ("nv_inference_request_summary_us",
                                                                          "relkd_ab_"))
        for s in samples:
            labels = s["labels"]
            if s["name"] == "nv_inference_request_summary_us" and labels.get("model") == model_name:
                key = {"0.5": "p50_ms", "0.99": "p99_ms"}.get(labels.get("quantile"))
                if key and labels.get("version") in versions and not math.isnan(s["value"]):
                    versions[labels["version"]][key] = s["value"] / 1000
        router = [s for s in samples if s["name"].startswith("relkd_ab_") and not math.isnan(s["value"])]
    return {"taken_at": time.time(), "model": model_name, "versions": versions, "router": router}

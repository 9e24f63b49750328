"""The online A/B router as a Triton python-backend model: one live entry point that assigns, calls and logs.

For each row it assigns the unit (UNIT_ID, else the request id) to an arm with the sticky salted hash of
relkd.serving.assignment, calls the arm's version of the student through Business Logic Scripting
(``pb_utils.InferenceRequest(model_name=..., model_version=...)``), returns the student's outputs plus ``ARM``
and ``VERSION``, and appends one exposure record per row to the durable log (relkd.serving.exposures) before
the response leaves. Traffic outside the experiment is served by the champion with ARM ``unassigned``.
Per-arm row counts, failures and the version call's latency are Triton custom metrics on ``/metrics``.

This file is copied as ``model.py`` into the router's version folder (``relkd.serving.router.write_router``),
beside ``router.json`` (model, experiment, shares, versions, exposure folder), ``assignment.py``,
``exposures.py`` and ``triton_model.py`` (the student's text rule); it runs in the *server's* environment and
imports nothing from relkd there.

Rows that share a version within one batch go to the student as one request (at most two calls, run
concurrently); if that call fails, each request is retried alone so one bad request fails alone.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np

try:  # present only inside the Triton python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported for its constants and checks by the writer, the launcher and tests
    pb_utils = None

ROUTER_FILE = "router.json"
EXPOSURES_ENV = "RELKD_EXPOSURES"  # the exposure folder of this server process; overrides router.json's
UNIT_INPUT, EXPERIMENT_INPUT = "UNIT_ID", "EXPERIMENT"
ROUTER_OUTPUTS = {"ARM": ("TYPE_STRING", [1]), "VERSION": ("TYPE_INT64", [1])}
# Always asked of the student: what an exposure record holds.
RECORDED_OUTPUTS = ("LABEL", "TIER", "SCORE")
LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


def _module(name: str):
    """relkd.serving.<name> where relkd is installed, else the copy beside this file (inside the Triton stub);
    loaded once."""
    import importlib
    import sys

    local = f"relkd_router_{name}"
    if local in sys.modules:
        return sys.modules[local]
    try:
        return importlib.import_module(f"relkd.serving.{name}")
    except ImportError:
        import importlib.util

        path = Path(__file__).with_name(f"{name}.py")
        if not path.is_file():
            raise ImportError(f"{path} is missing: the router needs {name}.py beside model.py (write it with "
                              "relkd.serving.router.write_router)") from None
        spec = importlib.util.spec_from_file_location(local, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[local] = module
        spec.loader.exec_module(module)
        return module


def check_router_info(info: dict) -> None:
    """Raise ValueError naming the offending field when router.json cannot drive the router."""
    if not info.get("model"):
        raise ValueError(f"router.json: model must name the served student model, got {info.get('model')!r}")
    if not isinstance(info.get("experiment"), str) or not info["experiment"]:
        raise ValueError(f"router.json: experiment (the salt) must be a non-empty string, got "
                         f"{info.get('experiment')!r}")
    versions = info.get("versions") or {}
    if "champion" not in versions:
        raise ValueError(f"router.json: versions must name the champion's version (it serves the traffic outside "
                         f"the experiment), got {versions!r}")
    if any(not isinstance(v, int) or v < 1 for v in versions.values()):
        raise ValueError(f"router.json: versions must be positive integers, got {versions!r}")
    shares = _module("assignment").check_shares(info.get("shares") or {})
    unserved = sorted(arm for arm, share in shares.items() if share > 0 and arm not in versions)
    if unserved:
        raise ValueError(f"router.json: arms {unserved} have a share of traffic but no version in {versions}")
    if not info.get("exposures"):
        raise ValueError("router.json: exposures must name the exposure folder")


def exposure_folder(info: dict, environ=os.environ) -> Path:
    """$RELKD_EXPOSURES when set (the launcher's choice for this server), else router.json's folder; a relative
    path is taken from the server's working directory."""
    return Path(environ.get(EXPOSURES_ENV) or info["exposures"]).absolute()


def _text_rows(request, name: str, required: bool = True):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise ValueError(f"input {name} is missing")
        return None
    return tensor.as_numpy().reshape(-1)


def _decoded(values, name: str) -> list[str]:
    """The texts of an input, checked by the student's own rule (a bad row fails its request here, before it could
    fail a whole batch at the student)."""
    text_problem = _module("triton_model").text_problem  # loaded once (initialize loads it first)
    out = []
    for i, value in enumerate(values):
        text, problem = text_problem(value)
        if problem:
            raise ValueError(f"{name}[{i}] {problem}; send non-empty UTF-8 text")
        out.append(text)
    return out


class TritonPythonModel:
    def initialize(self, args):
        self.dir = Path(args["model_repository"]) / args["model_version"]
        self.info = json.loads((self.dir / ROUTER_FILE).read_text(encoding="utf-8"))
        check_router_info(self.info)
        _module("triton_model")  # a missing helper fails the load, not the first request
        config = json.loads(args["model_config"])
        outputs = [o["name"] for o in config["output"]]
        self.student_outputs = [o for o in outputs if o not in ROUTER_OUTPUTS]
        self.experiment = self.info["experiment"]
        self.assign = _module("assignment").Assigner(self.experiment, self.info.get("shares") or {})
        versions = {arm: int(v) for arm, v in self.info["versions"].items()}
        versions.setdefault(self.assign.rest, versions["champion"])  # outside the experiment: the champion
        self.versions = versions
        exposures = _module("exposures")
        # Raises when the folder is not writable: the model fails to load and the server does not start.
        self.log = exposures.ExposureLog(exposure_folder(self.info), int(self.info.get("rotate_bytes", 64 << 20)),
                                         bool(self.info.get("fsync", True)))
        self._metrics()

    def _metrics(self):
        family = pb_utils.MetricFamily
        self.families = [
            family(name="relkd_ab_requests_total", description="rows (unit requests) served through the A/B "
                   "router, by experiment, arm and version", kind=family.COUNTER),
            family(name="relkd_ab_failures_total", description="rows the A/B router answered with an error, by "
                   "experiment, arm and reason", kind=family.COUNTER),
            family(name="relkd_ab_latency_ms", description="the router's call to the arm's version, per row, in "
                   "milliseconds", kind=family.HISTOGRAM),
        ]
        self.counters, self.failures, self.latency = {}, {}, {}
        exp = self.experiment
        for arm, version in self.versions.items():
            labels = {"experiment": exp, "arm": arm, "version": str(version)}
            self.counters[arm] = self.families[0].Metric(labels=labels)
            self.latency[arm] = self.families[2].Metric(labels={"experiment": exp, "arm": arm},
                                                        buckets=LATENCY_BUCKETS_MS)

    def _fail(self, arm: str, reason: str, rows: int) -> None:
        key = (arm, reason)
        if key not in self.failures:
            self.failures[key] = self.families[1].Metric(labels={"experiment": self.experiment, "arm": arm,
                                                                "reason": reason})
        self.failures[key].increment(rows)

    def _parse(self, request) -> dict:
        """The request's rows, units and arms; ValueError says what is wrong with it."""
        query, title = _text_rows(request, "QUERY"), _text_rows(request, "TITLE")
        if len(query) != len(title):
            raise ValueError(f"QUERY has {len(query)} rows but TITLE has {len(title)}")
        _decoded(query, "QUERY"), _decoded(title, "TITLE")
        n = len(query)
        experiments = _text_rows(request, EXPERIMENT_INPUT, required=False)
        if experiments is not None:
            unknown = sorted(set(_decoded(experiments, EXPERIMENT_INPUT)) - {self.experiment})
            if unknown:
                raise ValueError(f"unknown experiment {unknown[0]!r}: this router runs experiment "
                                 f"{self.experiment!r} (ab.salt); send that, or leave {EXPERIMENT_INPUT} out")
        units = _text_rows(request, UNIT_INPUT, required=False)
        request_id = request.request_id()
        if units is not None:
            if len(units) != n:
                raise ValueError(f"{UNIT_INPUT} has {len(units)} rows but QUERY has {n}")
            units, unit_from = _decoded(units, UNIT_INPUT), UNIT_INPUT
        elif request_id:
            units, unit_from = [request_id] * n, "request_id"
        else:
            raise ValueError(f"the request has neither {UNIT_INPUT} nor a request id: send {UNIT_INPUT} (a user or "
                             "session id) so the unit keeps its arm across requests")
        arms = [self.assign(u) for u in units]
        wanted = set(request.requested_output_names() or ()) or set(self.student_outputs) | set(ROUTER_OUTPUTS)
        return {"query": query, "title": title, "units": units, "unit_from": unit_from, "arms": arms,
                "request_id": request_id, "wanted": wanted}

    async def _call(self, version: int, parts: list[dict]):
        """One BLS request to `version` with the rows of `parts` ((request, rows) pairs); (outputs or None,
        error message or None, milliseconds)."""
        query = np.concatenate([p["query"][p["rows"]] for p in parts]).reshape(-1, 1)
        title = np.concatenate([p["title"][p["rows"]] for p in parts]).reshape(-1, 1)
        names = sorted(set(RECORDED_OUTPUTS).union(*({o for o in p["wanted"] if o in self.student_outputs}
                                                      for p in parts)))
        bls = pb_utils.InferenceRequest(model_name=self.info["model"], model_version=version,
                                        requested_output_names=names,
                                        inputs=[pb_utils.Tensor("QUERY", query), pb_utils.Tensor("TITLE", title)])
        t0 = time.perf_counter()
        response = await bls.async_exec()
        ms = (time.perf_counter() - t0) * 1000
        if response.has_error():
            return None, response.error().message(), ms
        out = {}
        for name in names:
            tensor = pb_utils.get_output_tensor_by_name(response, name)
            if tensor is not None:
                out[name] = tensor.as_numpy()
        return out, None, ms

    async def _serve_version(self, version: int, parts: list[dict]) -> list:
        """[(outputs, error, ms)] per part: one call for all of them; on failure one call each."""
        merged = await self._call(version, parts)
        if merged[1] is None or len(parts) == 1:
            result, out = [], merged[0]
            start = 0
            for p in parts:
                k = len(p["rows"])
                result.append(({n: v[start:start + k] for n, v in out.items()} if out is not None else None,
                               merged[1], merged[2]))
                start += k
            return result
        return await asyncio.gather(*(self._call(version, [p]) for p in parts))

    async def execute(self, requests):
        responses = [None] * len(requests)
        parsed = {}
        for i, request in enumerate(requests):
            try:
                parsed[i] = self._parse(request)
            except ValueError as e:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_error(str(e)))
                self._fail("none", "bad_request", 1)
        by_version = {}
        for i, p in parsed.items():
            for version in sorted({self.versions[a] for a in p["arms"]}):
                rows = np.array([k for k, a in enumerate(p["arms"]) if self.versions[a] == version])
                by_version.setdefault(version, []).append({**p, "i": i, "rows": rows})
        versions = list(by_version)
        results = await asyncio.gather(*(self._serve_version(v, by_version[v]) for v in versions))
        served = {}  # request -> [(part, outputs, ms)]
        for version, parts, outs in zip(versions, [by_version[v] for v in versions], results):
            for part, (out, error, ms) in zip(parts, outs):
                i = part["i"]
                if error is not None and responses[i] is None:
                    arm = part["arms"][int(part["rows"][0])]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_error(
                        f"the {arm} arm (version {version} of {self.info['model']}) did not answer: {error}. Is "
                        f"that version loaded (`relkd serve --check`)? Units of the other arms are still served"))
                    self._fail(arm, "version_error", len(part["arms"]))
                served.setdefault(i, []).append((part, out, ms))
        answers, records = {}, []
        now = time.time()
        for i, parts in served.items():
            if responses[i] is not None:
                continue
            try:
                tensors, rows = self._assemble(parts)
            except ValueError as e:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_error(str(e)))
                self._fail("none", "bad_request", len(parts[0][0]["arms"]))
                continue
            answers[i] = tensors
            records += [dict(r, ts=now) for r in rows]
        try:
            self.log.write(records)
        except OSError as e:
            for i in answers:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                    f"the exposure log {self.log.path} could not be written ({e}); the router does not serve "
                    "traffic it cannot log"))
                self._fail("none", "log_error", len(parsed[i]["arms"]))
            return responses
        for i, tensors in answers.items():
            p = parsed[i]
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(k, v) for k, v in tensors.items() if k in p["wanted"]])
            for arm in p["arms"]:
                self.counters[arm].increment(1)
        for part, _, ms in (x for i in answers for x in served[i]):
            for arm in (part["arms"][int(k)] for k in part["rows"]):
                self.latency[arm].observe(ms)
        return responses

    def _assemble(self, parts) -> tuple[dict, list[dict]]:
        """The response tensors of one request (its rows back in order) and its exposure records."""
        p = parts[0][0]
        n = len(p["arms"])
        tensors = {}
        names = set.intersection(*(set(out) for _, out, _ in parts))
        for name in names:
            pieces = [(part["rows"], out[name]) for part, out, _ in parts]
            shapes = {arr.shape[1:] for _, arr in pieces}
            if len(shapes) > 1:
                raise ValueError(f"the rows of this request were served by versions whose {name} differ in shape "
                                 f"{sorted(shapes)}; ask for {name} one unit per request")
            first = pieces[0][1]
            full = np.empty((n, *first.shape[1:]), dtype=first.dtype)
            for rows, arr in pieces:
                full[rows] = arr
            tensors[name] = full
        tensors["ARM"] = np.array([a.encode("utf-8") for a in p["arms"]], dtype=np.object_).reshape(n, 1)
        tensors["VERSION"] = np.array([self.versions[a] for a in p["arms"]], dtype=np.int64).reshape(n, 1)
        ms = np.zeros(n)
        for part, _, t in parts:
            ms[part["rows"]] = t
        labels, tiers, scores = tensors["LABEL"].reshape(-1), tensors["TIER"].reshape(-1), tensors["SCORE"].reshape(-1)
        records = [{"request_id": p["request_id"], "row": k, "unit_id": p["units"][k], "unit_from": p["unit_from"],
                    "experiment": self.experiment, "arm": p["arms"][k], "version": self.versions[p["arms"][k]],
                    "label": bytes(labels[k]).decode("utf-8"), "tier": int(tiers[k]), "score": float(scores[k]),
                    "latency_ms": round(float(ms[k]), 3)} for k in range(n)]
        return tensors, records

    def finalize(self):
        self.log.close()
        # A metric must go before its family.
        self.counters, self.failures, self.latency = {}, {}, {}
        self.families = []


def _error(message: str):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)

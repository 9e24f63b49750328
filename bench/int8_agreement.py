"""Where int8 loses a trained student's decisions: argmax agreement with fp32, route by route, in one run.

The export stage serves int8 only when its argmax agreement with fp32 is at least export.min_int8_agreement
(99.5%). This bench measures, on the given evaluation sets, every integer route onnxruntime offers here and
the schemes it does not, simulated in torch, so the cause of a miss is visible:

* onnxruntime routes (the served kind): dynamic int8 of the encoder's weight MatMuls per channel (export's
  default), with 7-bit weights (``reduce_range``: the fix for CPUs whose u8 x s8 dot product saturates),
  per tensor, static QDQ with calibration pairs, SmoothQuant (per input channel scales, alpha 0.5, move the
  activations' outlier channels into the weights through an fp32 Mul before each MatMul group, then dynamic
  per channel), and one MatMul group at a time (q/k/v, attention output, FFN in, FFN out);
* torch fake quantisation of the encoder's Linear layers: weights only (int8 per output channel, fp32
  activations), activations only (uint8 per tensor, as onnxruntime's DynamicQuantizeLinear; or per token,
  which onnxruntime's CPU kernels do not offer), and both;
* agreement on every row and on the rows fp32 decides by a margin (top-1 minus top-2 probability) of 0.1 or
  more; the share of near-ties, and the activations' outlier ratio per MatMul input (largest channel maximum
  over the median channel maximum): the two reasons a route flips rows.

    python bench/int8_agreement.py --student models/student/plain/seed13 \\
        --eval valid=data/prepared/valid.parquet \\
        --eval homedepot=PATH/TO/homedepot_dev.csv.gz:search_term:product_title \\
        --calibration data/prepared/train.parquet
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_pairs, report  # noqa: E402

GROUPS = ("q/k/v", "attention output", "FFN in", "FFN out")
MARGIN = 0.1  # fp32 top-1 minus top-2 probability: rows below it are near-ties, where any rounding may flip


def matmul_groups(model, names: list[str]) -> dict[str, list[str]]:
    """The encoder's weight MatMuls by role, from the weight's shape ([h, 4h]: FFN in, [4h, h]: FFN out) and, for
    the square ones, graph order (q, k, v, then the attention output, per layer)."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    out = {g: [] for g in GROUPS}
    square = 0
    for node in model.graph.node:
        if node.name not in names:
            continue
        rows, cols = inits[node.input[1]]
        if cols > rows:
            out["FFN in"].append(node.name)
        elif rows > cols:
            out["FFN out"].append(node.name)
        else:
            out["attention output" if square % 4 == 3 else "q/k/v"].append(node.name)
            square += 1
    return out


def channel_max(path: Path, inputs: list[str], batches, work: Path) -> dict[str, np.ndarray]:
    """Per channel max |x| over the real (unmasked) tokens of `batches`, for each named graph tensor."""
    import onnx
    from onnx import TensorProto, helper

    from relkd.serving.export import ort_session

    model = onnx.load(str(path))
    model.graph.output.extend(helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in inputs)
    probe = work / "probe.onnx"
    onnx.save(model, str(probe))
    sess = ort_session(probe)
    feeds = [i.name for i in sess.get_inputs()]
    amax: dict[str, np.ndarray] = {}
    for b in batches:
        mask = b["attention_mask"].astype(bool)
        for x, v in zip(inputs, sess.run(inputs, {k: b[k] for k in feeds})):
            cm = np.abs(v[mask] if v.ndim == 3 else v.reshape(-1, v.shape[-1])).max(0)
            amax[x] = np.maximum(amax[x], cm) if x in amax else cm
    return amax


def smooth(pre: Path, out: Path, names: list[str], amax: dict[str, np.ndarray], alpha: float) -> Path:
    """SmoothQuant on the graph: for each input x shared by a group of weight MatMuls, s_j = max|x_j|^alpha /
    max|W_j|^(1 - alpha); x / s through an inserted fp32 Mul, W rows scaled by s (exact in fp32)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(pre))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    by_input: dict[str, list] = {}
    for node in g.node:
        if node.name in names:
            by_input.setdefault(node.input[0], []).append(node)
    muls = []
    for x, nodes in by_input.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        wmax = np.max([np.abs(w).max(1) for w in weights], axis=0)
        s = np.clip(np.clip(amax[x], 1e-5, None) ** alpha / np.clip(wmax, 1e-5, None) ** (1 - alpha), 1e-2, 1e2)
        inv = numpy_helper.from_array((1 / s).astype(np.float32), f"{x}_smooth_inv")
        g.initializer.append(inv)
        muls.append((nodes[0], helper.make_node("Mul", [x, inv.name], [f"{x}_smoothed"], name=f"{x}_smooth")))
        for n, w in zip(nodes, weights):
            inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), n.input[1]))
            n.input[0] = f"{x}_smoothed"
    order = list(g.node)
    for first, mul in muls:  # each Mul right before the first MatMul that reads it: order stays topological
        order.insert(order.index(first), mul)
    del g.node[:]
    g.node.extend(order)
    onnx.save(model, str(out))
    return out


def fake_quant(student, weights: bool, activations: str | None):
    """A copy of the student whose encoder Linear layers see int8-rounded weights (per output channel,
    symmetric) and/or uint8-rounded inputs ('tensor': one range per batch, zero included, as onnxruntime's
    DynamicQuantizeLinear; 'token': one range per token)."""
    import torch

    def q_weight(w):
        s = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
        return (w / s).round().clamp(-127, 127) * s

    def q_act(x):
        dims = dict(dim=-1, keepdim=True) if activations == "token" else {}
        lo = (x.amin(**dims) if dims else x.min()).clamp(max=0)
        hi = (x.amax(**dims) if dims else x.max()).clamp(min=0)
        s = ((hi - lo) / 255).clamp(min=1e-12)
        zp = (-lo / s).round()
        return ((x / s).round() + zp).clamp(0, 255).sub(zp) * s

    model = copy.deepcopy(student)
    for module in model.backbone.encoder.modules():
        if isinstance(module, torch.nn.Linear):
            if weights:
                module.weight.data = q_weight(module.weight.data)
            if activations:
                module.register_forward_pre_hook(lambda mod, inp: (q_act(inp[0]),))
    return model


def parse_eval(spec: str) -> tuple[str, str, str, str]:
    name, sep, rest = spec.partition("=")
    path, *cols = rest.split(":")
    if not sep or not path or len(cols) not in (0, 2):
        raise SystemExit(f"--eval {spec!r}: expected NAME=PATH or NAME=PATH:QUERY_COL:TITLE_COL")
    return name, path, *(cols or ["query", "title"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, help="a saved student folder (models/student/<v>/seed<N>)")
    ap.add_argument("--eval", action="append", required=True, metavar="NAME=PATH[:QUERY_COL:TITLE_COL]",
                    help="an evaluation set, CSV or Parquet (columns query, title unless named); repeatable")
    ap.add_argument("--pairs", type=int, default=1000, help="pairs drawn from each evaluation set at most")
    ap.add_argument("--calibration", required=True, help="calibration pairs (static QDQ, SmoothQuant), CSV/Parquet "
                    "with query and title columns, e.g. data/prepared/train.parquet")
    ap.add_argument("--calibration-pairs", type=int, default=256)
    ap.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant's migration strength")
    ap.add_argument("--name", default="int8_agreement", help="results file name (bench/results/NAME.json)")
    a = ap.parse_args()

    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic
    from scipy.special import softmax

    from relkd.serving.export import (
        calibration_batches,
        encoder_weight_matmuls,
        export_onnx,
        quantize_int8,
        score_pairs,
    )
    from relkd.student.model import InferenceWrapper, load_student

    student, tok = load_student(a.student)
    student.eval()
    max_len = student.max_length
    sets = {name: load_pairs(path, a.pairs, q, t) for name, path, q, t in map(parse_eval, a.eval)}
    tables = student.lexical_tables  # a student with a lexical head: its features feed every graph
    calibration = calibration_batches(tok, load_pairs(a.calibration, a.calibration_pairs, "query", "title", seed=6),
                                      max_len, lexical_tables=tables)
    work = Path(tempfile.mkdtemp(prefix="relkd-int8-"))
    fp32 = work / "fp32.onnx"
    samples = sorted(next(iter(sets.values())), key=lambda p: len(p[0]) + len(p[1]))
    export_onnx(InferenceWrapper(student), tok, fp32, max_len, [samples[0], samples[len(samples) // 2], samples[-1]])
    pre = work / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    graph = onnx.load(str(pre))
    names = encoder_weight_matmuls(graph)
    groups = matmul_groups(graph, names)
    input_of = {n.name: n.input[0] for n in graph.graph.node if n.name in names}
    inputs = sorted(set(input_of.values()))
    amax = channel_max(pre, inputs, calibration, work)

    def dynamic(out, selected, source=pre, reduce_range=False):
        """Dynamic int8, per channel, of the `selected` weight MatMuls of `source` (a pre-processed graph)."""
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=reduce_range, nodes_to_quantize=selected, op_types_to_quantize=["MatMul"])
        return out

    onnx_routes = {
        "onnxruntime dynamic, encoder, per-channel (export's default)": quantize_int8(fp32, work / "d.onnx"),
        "onnxruntime dynamic, encoder, per-channel, 7-bit weights": dynamic(work / "r.onnx", names, reduce_range=True),
        "onnxruntime dynamic, encoder, per-tensor": quantize_int8(fp32, work / "t.onnx", per_channel=False),
        f"onnxruntime static QDQ ({a.calibration_pairs} calibration pairs), encoder, per-channel":
            quantize_int8(fp32, work / "s.onnx", calibration=calibration),
        f"onnxruntime SmoothQuant (alpha {a.alpha}) + dynamic, encoder, per-channel":
            dynamic(work / "sq.onnx", names, smooth(pre, work / "smoothed.onnx", names, amax, a.alpha)),
        **{f"onnxruntime dynamic, {g} only ({len(sel)} MatMuls), per-channel": dynamic(work / f"g{i}.onnx", sel)
           for i, (g, sel) in enumerate(groups.items())},
    }
    rows, ref, margins = [], {}, {}
    with torch.inference_mode():
        for name, pairs in sets.items():
            probs = softmax(score_pairs(fp32, tok, pairs, max_len, lexical_tables=tables)[0].astype(np.float64), axis=1)
            ref[name] = probs.argmax(1)
            top2 = np.sort(probs, axis=1)[:, -2:]
            margins[name] = top2[:, 1] - top2[:, 0]

        def compare(route: str, scored) -> None:
            """Agreement with fp32 on every row and on the rows fp32 decides by a margin of MARGIN or more."""
            row = {"route": route}
            for name, pairs in sets.items():
                same = scored(pairs).argmax(1) == ref[name]
                row[f"agreement {name}"] = float(same.mean())
                row[f"agreement {name}, margin >= {MARGIN}"] = float(same[margins[name] >= MARGIN].mean())
            rows.append(row)
            print(row, flush=True)

        for route, path in onnx_routes.items():
            compare(route, lambda pairs, p=path: score_pairs(p, tok, pairs, max_len, lexical_tables=tables)[0])
        for label, w, act in (("weights only (per channel)", True, None),
                              ("activations per tensor only", False, "tensor"),
                              ("weights + activations per tensor", True, "tensor"),
                              ("activations per token only", False, "token"),
                              ("weights + activations per token", True, "token")):
            model = InferenceWrapper(fake_quant(student, w, act)).eval()
            compare(f"torch fake int8: {label}",
                    lambda pairs, m=model: score_pairs(m, tok, pairs, max_len, lexical_tables=tables)[0])
    ratios = {x: float(v.max() / np.median(v)) for x, v in amax.items()}
    by_role = {g: max(ratios[input_of[n]] for n in sel) for g, sel in groups.items()}
    margin_stats = {name: {"n": int(len(m)), "share_below_0.05": float((m < 0.05).mean()),
                           "share_below_0.1": float((m < 0.1).mean()), "median": float(np.median(m))}
                    for name, m in margins.items()}
    columns = ["route", *[c for n in sets for c in (f"agreement {n}", f"agreement {n}, margin >= {MARGIN}")]]
    report(a.name, rows, columns, {"student": a.student, "sets": {n: len(p) for n, p in sets.items()},
                                   "fp32_margins": margin_stats, "outlier_ratio_by_matmul_input": by_role})
    print("fp32 top-1 minus top-2 probability:", margin_stats)
    print("activation outlier ratio (largest / median channel max) by MatMul input:", by_role)


if __name__ == "__main__":
    main()

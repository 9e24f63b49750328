"""Does a trained LRKD-Poly student's extractor attend, or is its r the mean of the token states?

The Poly-encoder extractor (Appendix A, eqs. 12-13) scores every token against K learned codes, softmax over the
tokens, and averages the attended vectors. With scores near zero the attention is uniform and r is the masked
mean of H: with `student.pooling: mean` that is h_cls itself, so the head sees [h_cls ; h_cls] and the guidance
acts on h_cls (or, with `student.guidance_into_backbone: false`, on codes that change nothing). For each student
folder this measures, on the first --rows pairs of a split: the codes' norm, the spread of the scores over the
tokens, the
largest attention weight times the number of valid tokens (1 = uniform), the attention's entropy over log L, and
cos(r, masked mean of H).

    cd REPO && python /path/to/bench/poly_attention.py models/student/lrkd_poly/seed13 [...] \
        --name poly_attention_embedded
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402


def measure(folder: str, split: str, rows: int) -> dict:
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from relkd.student.extractors import PolyExtractor
    from relkd.student.model import load_student, tokenize_pairs

    model, tok = load_student(folder)[:2]
    ex = model.extractor
    if not isinstance(ex, PolyExtractor):
        raise SystemExit(f"{folder}: its extractor is {type(ex).__name__}, not the Poly-encoder's")
    df = pd.read_parquet(split).head(rows)
    enc = tokenize_pairs(tok, df["query"].tolist(), df["title"].tolist(), model.max_length, padding=True,
                         return_tensors="pt")
    with torch.no_grad():
        H = model.backbone(**enc).last_hidden_state
        valid = enc["attention_mask"].bool()
        A = ex.attention(H, enc["attention_mask"])  # (B, L, K), the extractor's own weights
        n_tokens = valid.sum(1).float()
        entropy = -(A.clamp_min(1e-12).log() * A).sum(1).mean(1)  # per pair, mean over codes
        # log A is the score less a constant per (pair, code): its spread over a pair's valid tokens is the scores'
        m = valid.unsqueeze(-1).to(H.dtype)
        log_a = torch.where(valid.unsqueeze(-1), A.clamp_min(1e-30).log(), torch.zeros((), dtype=H.dtype))
        mean_log = log_a.sum(1, keepdim=True) / m.sum(1, keepdim=True)
        spread = (((log_a - mean_log) * m) ** 2).sum(1) / (m.sum(1) - 1).clamp_min(1)  # (B, K) variances
        r = ex(H, enc["attention_mask"])
        mean_h = (H * m).sum(1) / m.sum(1)
    return {"student": folder, "rows": len(df), "codes_norm": float(ex.codes.detach().norm(dim=1).mean()),
            "score_std_over_tokens": float(spread.sqrt().mean()),
            "max_weight_x_L": float((A.max(1).values.mean(1) * n_tokens).mean()),
            "entropy_over_logL": float((entropy / n_tokens.log()).mean()),
            "cos_r_mean_H": float(F.cosine_similarity(ex.proj(mean_h), r).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("students", nargs="+", help="LRKD-Poly student folders (models/student/lrkd_poly/seedN)")
    ap.add_argument("--split", default="data/prepared/valid.parquet", help="pairs to read (query, title columns)")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--name", default="poly_attention")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args()
    rows = [measure(s, a.split, a.rows) for s in a.students]
    report(a.name, rows, list(rows[0]), {"repo": os.path.basename(os.getcwd()), "split": a.split}, a.out)


if __name__ == "__main__":
    main()

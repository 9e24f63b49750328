"""How hard LRKD's guidance pulls against CE, in gradients rather than loss values, at initialisation.

In a repository whose pipeline has run up to `embed` (the prepared split, the rationales and their
embeddings), builds each LRKD student with `train_student`'s own set-up (`build_training`: the lexical warm start
included, seed 13), and on the first --batches training batches measures CE and λ·guidance and the norms of their
gradients, over all trainable parameters and over the backbone alone. With clipping at
`student.max_grad_norm`, a guidance gradient several times CE's shrinks CE's step by that factor.

    cd REPO && python /path/to/bench/guidance_gradients.py --name guidance_gradients_embedded [--lam 1]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402


def measure(name: str, lam: float, batches: int, seed: int = 13) -> dict:
    import torch
    import torch.nn.functional as F
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from pipeline.common import read_labels, read_split, setup
    from relkd.embed.store import read_embeddings
    from relkd.io import read_jsonl
    from relkd.student.config import named_variants
    from relkd.student.data import guiding_rationales, training_frame
    from relkd.student.trainer import build_training, make_collate

    params = setup("params.yaml")
    cfg, variant = params.student.model_copy(update={"lam": lam}), named_variants()[name]
    labels = read_labels("data/prepared")
    rationales = "data/teacher/rationales.jsonl"
    records, (vectors, meta) = read_jsonl(rationales), read_embeddings("data/embeddings")
    train, notes, emb = training_frame(read_split("data/prepared", "train"), records, vectors, meta["pair_ids"],
                                       cfg.train_rows)
    notes, emb = guiding_rationales(train, notes, emb, records, cfg.rationale_rows)
    set_seed(seed)
    module, tok, rows = build_training(train, labels, emb if variant.needs_embeddings else None,
                                       notes if variant.needs_rationales else None, variant, cfg, seed,
                                       params.peers.lexical)
    student = module.student
    loader = DataLoader(rows, batch_size=cfg.batch_size, shuffle=True, collate_fn=make_collate(tok.pad_token_id),
                        generator=torch.Generator().manual_seed(seed))

    def grad_norm(loss, backbone_only: bool) -> float:
        student.zero_grad()
        loss.backward(retain_graph=True)
        grads = [p.grad for n, p in student.named_parameters()
                 if p.grad is not None and (not backbone_only or n.startswith("backbone."))]
        return float(torch.sqrt(sum((g ** 2).sum() for g in grads))) if grads else 0.0

    out = []
    for i, b in enumerate(loader):
        if i == batches:
            break
        o = student(b["input_ids"], b["attention_mask"], b.get("token_type_ids"), b.get("lexical"))
        ce = F.cross_entropy(o.logits, b["labels"])
        guide = lam * module.guidance(o, b)  # the training rule: normalisation, guidance_into_backbone
        out.append([ce.item(), guide.item(), grad_norm(ce, False), grad_norm(guide, False), grad_norm(ce, True),
                    grad_norm(guide, True), float(b["has_cot"].sum())])
    m = np.mean(out, axis=0)
    return {"variant": name, "lam": lam, "CE": m[0], "lam_guidance": m[1], "grad_CE": m[2], "grad_guidance": m[3],
            "grad_CE_backbone": m[4], "grad_guidance_backbone": m[5], "guided_rows_per_batch": m[6],
            "CE_step_shrink_at_clip": max(1.0, float(np.hypot(m[2], m[3])) / cfg.max_grad_norm)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["lrkd_mlp", "lrkd_poly", "lrkd_gat"])
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--name", default="guidance_gradients")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args()
    sys.path.insert(0, os.getcwd())
    rows = [measure(v, a.lam, a.batches) for v in a.variants]
    report(a.name, rows, list(rows[0]), {"repo": os.path.basename(os.getcwd()), "batches": a.batches}, a.out)


if __name__ == "__main__":
    main()

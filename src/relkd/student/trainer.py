"""Train one student variant with accelerate (1 process, multi-process CPU/gloo, or GPUs), and predict.

The same code runs as one plain process, as ``torchrun --nproc_per_node N`` (an ``Accelerator(cpu=True)``
inside gives DistributedType.MULTI_CPU with gloo) or under ``accelerate launch`` on GPUs: the model,
optimizer and data loaders go through ``accelerator.prepare``, validation predictions are gathered
from all processes, and only the main process logs and saves.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from relkd import lexical
from relkd.student.config import StudentConfig, VariantConfig
from relkd.student.model import Student, build_student, save_student, tokenize_pairs
from relkd.student.objectives import (
    IGNORE,
    CRFHead,
    RationaleDecoder,
    augment_title,
    bio_tags,
    guidance_loss,
    info_nce,
)

LOSS_PARTS = ("loss", "ce", "guidance", "aux")


class TrainingModule(nn.Module):
    """The student plus its training-only heads, with one forward that returns every loss part.

    One module so that DDP wraps (and synchronises the gradients of) the decoder or CRF head together
    with the student, and sees one forward per step even when CRSD encodes two views.
    """

    def __init__(self, student: Student, variant: VariantConfig, lam: float,
                 guidance_normalize: bool = StudentConfig.model_fields["guidance_normalize"].default,
                 guidance_into_backbone: bool = StudentConfig.model_fields["guidance_into_backbone"].default):
        super().__init__()
        self.student = student
        self.variant = variant
        self.lam = float(lam)
        self.guidance_normalize = guidance_normalize
        self.guidance_into_backbone = guidance_into_backbone
        d_model = student.d_model
        self.decoder = RationaleDecoder(d_model, student.hidden_size) if variant.aux == "ced_kd" else None
        self.crf = CRFHead(d_model) if variant.aux == "mkd" else None

    def _fused(self, out) -> torch.Tensor:
        """The classifier's input: CRSD aligns what the head sees."""
        return torch.cat([out.h_cls, out.r], dim=-1) if self.student.extractor is not None else out.h_cls

    def _guided_r(self, out, attention_mask) -> torch.Tensor:
        """r computed again from the backbone's states cut from the graph: the guidance's gradient stops at the
        extractor (the head's r, from the same weights, still trains the backbone through CE)."""
        if self.student.extractor is not None:
            return self.student.extractor(out.hidden.detach(), attention_mask)
        h = out.h_cls.detach()
        return self.student.guide_proj(h) if self.student.guide_proj is not None else h

    def guidance(self, out, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The guidance loss of a forward's output against the batch's e_cot (in the graph, before λ)."""
        r, e_cot = out.r, batch["e_cot"]
        if not self.guidance_into_backbone:  # the guidance shapes the extractor (or projection) only
            r = self._guided_r(out, batch["attention_mask"])
        if self.guidance_normalize:  # both sides on the unit sphere: the loss is 2 - 2 cos(r, e_cot)
            r, e_cot = F.normalize(r, dim=-1), F.normalize(e_cot, dim=-1)
        return guidance_loss(r, e_cot, batch.get("has_cot"))

    def crsd(self, out, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """CRSD's term over the batch's pairs that have a rationale (a pair without one has no augmented view): the
        augmented view is the teacher, detached in InfoNCE, and trained to classify with the rationale in view so that
        it has something worth teaching. Zero when no pair of the batch has a rationale."""
        keep = batch["has_aug"]
        if not bool(keep.any()):
            return out.logits.new_zeros(())
        mask = batch["aug_attention_mask"][keep]
        width = int(mask.sum(1).max())  # right-padded: the kept rows' longest

        def pick(key):
            return batch[key][keep][:, :width] if key in batch else None

        lexical = batch["lexical"][keep] if "lexical" in batch else None
        aug = self.student(pick("aug_input_ids"), mask[:, :width], pick("aug_token_type_ids"), lexical)
        return (info_nce(self._fused(out)[keep], self._fused(aug).detach(), self.variant.crsd_temperature)
                + F.cross_entropy(aug.logits, batch["labels"][keep]))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.student(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                           batch.get("lexical"))
        y = batch["labels"]
        ce = F.cross_entropy(out.logits, y)
        zero = ce.new_zeros(())
        guide = zero
        if "e_cot" in batch and (self.student.extractor is not None or self.student.guide_proj is not None):
            guide = self.guidance(out, batch)
        aux, aux_w = zero, 0.0
        if self.variant.aux == "ced_kd":
            embeddings = self.student.backbone.get_input_embeddings().weight
            aux = self.decoder(out.h_cls, batch["dec_ids"], batch["dec_mask"], embeddings)
            aux_w = self.variant.aux_weight
        elif self.variant.aux == "mkd":
            aux = self.crf(out.hidden, batch["bio"])
            aux_w = self.variant.aux_weight
        elif self.variant.aux == "crsd":
            aux, aux_w = self.crsd(out, batch), self.variant.crsd_weight
        loss = ce + self.lam * guide + aux_w * aux
        return {"loss": loss, "ce": ce.detach(), "guidance": guide.detach(), "aux": aux.detach()}


# ------------------------------------------------------------------------------------------ data
def _label_ids(df, labels: tuple[str, ...]) -> list[int]:
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(map(str, df["label"])) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the label set {list(labels)}; pass the dataset's "
                         "full label set")
    return [index[str(v)] for v in df["label"]]


def encode_rows(df, labels, tokenizer, max_length: int, variant: VariantConfig | None = None,
                rationale_embeddings: np.ndarray | None = None, rationales=None,
                rationale_max_length: int = 48, lexical_x: np.ndarray | None = None) -> list[dict]:
    """One dict of token ids (the lexical features when given, and whatever the variant's losses need) per row
    of df."""
    enc = tokenize_pairs(tokenizer, df["query"], df["title"], max_length)
    ys = _label_ids(df, labels)
    rows = []
    for i in range(len(df)):
        row = {k: enc[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        row["labels"] = ys[i]
        if lexical_x is not None:
            row["lexical"] = lexical_x[i]
        if rationale_embeddings is not None:
            row["e_cot"] = rationale_embeddings[i]
            # A pair the teacher did not annotate has a NaN row: no guidance target for it.
            row["has_cot"] = bool(np.isfinite(rationale_embeddings[i]).all())
            if not row["has_cot"]:
                row["e_cot"] = np.zeros_like(rationale_embeddings[i])
        rows.append(row)
    aux = variant.aux if variant is not None else "none"
    if aux == "none":
        return rows
    queries, titles = [str(q) for q in df["query"]], [str(t) for t in df["title"]]
    texts = ["" if r is None else str(r) for r in rationales]
    if aux == "ced_kd":
        dec = tokenizer(texts, truncation=True, max_length=rationale_max_length)
        for row, ids in zip(rows, dec["input_ids"]):
            row["dec_ids"], row["dec_mask"] = ids, [1] * len(ids)
    elif aux == "mkd":
        for row, q, t, r in zip(rows, queries, titles, texts):
            row["bio"] = bio_tags(q, t, r, tokenizer, max_length)
    elif aux == "crsd":
        aug_titles = [augment_title(t, r, tokenizer.sep_token) for t, r in zip(titles, texts)]
        aug = tokenize_pairs(tokenizer, queries, aug_titles, max_length + rationale_max_length)
        for i, row in enumerate(rows):
            row["has_aug"] = bool(texts[i].strip())
            for k in ("input_ids", "attention_mask", "token_type_ids"):
                if k in aug:
                    row[f"aug_{k}"] = aug[k][i]
    return rows


def make_collate(pad_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Pads each sequence field to the batch's longest (ids with pad_id, masks and types with 0, BIO
    tags with -100)."""

    def pad(seqs, value):
        width = max(len(s) for s in seqs)
        return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in rows[0]:
            vals = [r[key] for r in rows]
            if key == "labels":
                batch[key] = torch.tensor(vals, dtype=torch.long)
            elif key == "has_cot":
                batch[key] = torch.tensor(vals, dtype=torch.float32)
            elif key == "has_aug":
                batch[key] = torch.tensor(vals, dtype=torch.bool)
            elif key in ("e_cot", "lexical"):
                batch[key] = torch.from_numpy(np.stack(vals).astype(np.float32))
            elif key == "bio":
                batch[key] = pad(vals, IGNORE)
            elif key.endswith("input_ids") or key == "dec_ids":
                batch[key] = pad(vals, pad_id)
            else:
                batch[key] = pad(vals, 0)
        return batch

    return collate


def _check_inputs(train_df, variant, rationale_embeddings, rationales) -> None:
    if variant.needs_embeddings and rationale_embeddings is None:
        raise ValueError("this variant uses the guidance loss, so rationale_embeddings (one e_cot per train "
                         "row) are required; embed the rationales with relkd.embed.encode_rationales")
    if rationale_embeddings is not None and len(rationale_embeddings) != len(train_df):
        raise ValueError(f"rationale_embeddings has {len(rationale_embeddings)} rows but train_df has "
                         f"{len(train_df)}: they must be aligned row by row")
    if variant.needs_rationales and rationales is None:
        raise ValueError(f"aux={variant.aux!r} trains on the rationale texts: pass rationales aligned to train_df")
    if rationales is not None and len(rationales) != len(train_df):
        raise ValueError(f"rationales has {len(rationales)} rows but train_df has {len(train_df)}")


def _param_groups(module: TrainingModule, weight_decay: float, lr: float, head_lr: float | None = None) -> list[dict]:
    """AdamW groups: weight decay off for biases and norms; the backbone at `lr`, every other parameter (extractor,
    heads, guidance projection, the training-only heads) at `head_lr` (None: `lr`)."""
    backbone = {id(p) for p in module.student.backbone.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decays = not (p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower())
        groups.setdefault((id(p) in backbone, decays), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decays else 0.0,
             "lr": lr if in_backbone or head_lr is None else head_lr}
            for (in_backbone, decays), ps in sorted(groups.items(), reverse=True)]


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 over all n_labels classes (a class never seen nor predicted scores 0, as
    sklearn's f1_score(labels=range(n_labels), average="macro", zero_division=0))."""
    from relkd.eval.metrics import macro_f1_from_codes

    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return {"accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else float("nan"),
            "macro_f1": macro_f1_from_codes(y_true, y_pred, n_labels)}


def lexical_warm_start(student: Student, x: np.ndarray, y: np.ndarray, seed: int, C: float = 1.0,
                       max_iter: int = 5000) -> None:
    """Fit the lexical peer's logistic regression (:func:`relkd.eval.peers.feature_classifier`, standardised
    features) on the training pairs' features `x` and labels `y` (codes) and start the student's lexical head
    from it (:meth:`Student.warm_start_lexical`). A class absent from the training pairs gets a bias far below
    the others; with one class only the head starts at the scaler and zero weights."""
    from relkd.eval.peers import feature_classifier

    n_labels, n_feat = len(student.labels), x.shape[1]
    coef, intercept = np.zeros((n_labels, n_feat)), np.zeros(n_labels)
    classes = np.unique(y)
    if len(classes) < 2:
        mean, scale = x.mean(0), x.std(0)
    else:
        clf = feature_classifier("lr", seed, C, max_iter).fit(x, y)
        scaler, lr = clf[0], clf[-1]
        mean, scale = scaler.mean_, scaler.scale_
        w, b = lr.coef_, lr.intercept_
        if len(lr.classes_) == 2:  # scikit-learn's binary LR has one row: the logit of the second class
            w, b = np.vstack([np.zeros_like(w), w]), np.concatenate([[0.0], b])
        intercept[:] = b.min() - 10.0
        coef[lr.classes_], intercept[lr.classes_] = w, b
    student.warm_start_lexical(mean, np.where(scale > 0, scale, 1.0), coef, intercept)


def module_lam(module) -> float:
    return float(getattr(module, "module", module).lam)


# ----------------------------------------------------------------------------------------- train
def kept_epoch(history: list[dict]) -> dict:
    """The epoch record of the weights train_student returns: the best on validation (`best_epoch`), or the
    last when there was no validation split."""
    best = history[-1].get("best_epoch")
    return next((h for h in history if h["epoch"] == best), history[-1])


def build_training(train_df, labels, rationale_embeddings, rationales, variant: VariantConfig, cfg: StudentConfig,
                   seed: int, lexical_recipe=None):
    """The student as training starts, wrapped with its losses, and its encoded training rows: returns
    (TrainingModule, tokenizer, rows). The one set-up of :func:`train_student` (call it after seeding), also used to
    measure a student at initialisation (bench/guidance_gradients.py)."""
    labels = tuple(labels)
    _check_inputs(train_df, variant, rationale_embeddings, rationales)
    d_out = None if rationale_embeddings is None else int(np.asarray(rationale_embeddings).shape[1])
    tables = lexical.fit_tables(train_df["query"].tolist(), train_df["title"].tolist()) if cfg.lexical else None
    student, tokenizer = build_student(cfg.backbone, labels, variant, d_out, cfg.hidden, cfg.codes, cfg.max_length,
                                       cfg.pooling, tables)
    x_train = None
    if tables is not None:
        x_train = student.lexical_features(train_df["query"].tolist(), train_df["title"].tolist())
        recipe = {} if lexical_recipe is None else {"C": lexical_recipe.C, "max_iter": lexical_recipe.max_iter}
        lexical_warm_start(student, x_train.astype(np.float64), np.asarray(_label_ids(train_df, labels)), seed,
                           **recipe)
    module = TrainingModule(student, variant, cfg.lam_for(variant), cfg.guidance_normalize, cfg.guidance_into_backbone)
    emb = None if rationale_embeddings is None else np.asarray(rationale_embeddings, dtype=np.float32)
    rows = encode_rows(train_df, labels, tokenizer, cfg.max_length, variant, emb, rationales,
                       cfg.rationale_max_length, x_train)
    return module, tokenizer, rows


def train_student(train_df, valid_df, labels, rationale_embeddings, rationales, variant: VariantConfig,
                  cfg: StudentConfig, seed: int, out_dir=None, log=None, lexical_recipe=None):
    """Train one student; returns (Student, tokenizer, history).

    With ``cfg.lexical`` the student gets lexical tables fitted on train_df and a lexical head warm-started
    from the logistic regression on them (``lexical_recipe``: the lexical peer's C and max_iter, e.g.
    params ``peers.lexical``; None: scikit-learn's defaults), the token head starting at zero.

    ``history`` holds one dict per epoch: epoch, train_loss, train_ce, train_guidance, train_aux (means
    over the epoch's steps and processes), valid_accuracy and valid_macro_f1 (when valid_df is given),
    and distributed_type / num_processes. ``log(metrics, step=epoch)`` is called on the main process
    only; ``out_dir`` receives the inference folder (main process only).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    labels = tuple(labels)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(seed)
    module, tokenizer, train_rows = build_training(train_df, labels, rationale_embeddings, rationales, variant, cfg,
                                                   seed, lexical_recipe)
    student = module.student
    collate = make_collate(tokenizer.pad_token_id)
    train_loader = DataLoader(train_rows, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate,
                              generator=torch.Generator().manual_seed(seed))
    has_valid = valid_df is not None and len(valid_df) > 0
    valid_loader = None
    if has_valid:
        x_valid = None if student.lexical_tables is None else student.lexical_features(
            valid_df["query"].tolist(), valid_df["title"].tolist())
        valid_rows = encode_rows(valid_df, labels, tokenizer, cfg.max_length, lexical_x=x_valid)
        valid_loader = DataLoader(valid_rows, batch_size=cfg.eval_batch_size, shuffle=False, collate_fn=collate)
    optimizer = torch.optim.AdamW(_param_groups(module, cfg.weight_decay, cfg.lr, cfg.head_lr), lr=cfg.lr)

    if valid_loader is not None:
        module, optimizer, train_loader, valid_loader = accelerator.prepare(module, optimizer, train_loader,
                                                                           valid_loader)
    else:
        module, optimizer, train_loader = accelerator.prepare(module, optimizer, train_loader)
    # Steps are counted on the prepared (per-process) loader; the schedule is stepped by hand, once per
    # optimizer step, so it means the same thing for any number of processes.
    total = max(1, cfg.epochs * len(train_loader))
    warmup = int(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )

    history, best, best_state = [], None, None
    for epoch in range(1, cfg.epochs + 1):
        module.train()
        sums = torch.zeros(len(LOSS_PARTS), device=accelerator.device)
        steps = 0
        bar = tqdm(train_loader, desc=f"student epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not accelerator.is_local_main_process)
        for batch in bar:
            parts = module(batch)
            accelerator.backward(parts["loss"])
            accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            sums += torch.stack([parts[k].detach().float() for k in LOSS_PARTS])
            steps += 1
            bar.set_postfix(loss=f"{parts['loss'].item():.4f}")
        means = accelerator.reduce(sums / max(1, steps), reduction="mean").cpu().tolist()
        metrics = {f"train_{k}": float(v) for k, v in zip(LOSS_PARTS, means)}
        # How much of the objective the guidance is: lambda * guidance / CE (comparable sizes by design).
        metrics["train_guidance_to_ce"] = (module_lam(module) * metrics["train_guidance"]
                                           / max(metrics["train_ce"], 1e-12))
        if valid_loader is not None:
            metrics.update({f"valid_{k}": v for k, v in
                            _evaluate(accelerator, module, valid_loader, len(labels)).items()})
            # The epoch best on validation macro-F1 is the one kept (ties: the earlier epoch).
            if best is None or metrics["valid_macro_f1"] > best[1]:
                best = (epoch, metrics["valid_macro_f1"])
                best_state = {k: v.detach().cpu().clone()
                              for k, v in accelerator.unwrap_model(module).student.state_dict().items()}
        record = {"epoch": epoch, **metrics, "distributed_type": str(accelerator.distributed_type),
                  "num_processes": accelerator.num_processes}
        history.append(record)
        if log is not None and accelerator.is_main_process:
            log(metrics, step=epoch)

    student = accelerator.unwrap_model(module).student
    if best_state is not None:
        student.load_state_dict(best_state)
        for record in history:
            record["best_epoch"] = best[0]
    student.eval()
    if out_dir is not None and accelerator.is_main_process:
        save_student(student, tokenizer, out_dir)
    accelerator.wait_for_everyone()
    return student, tokenizer, history


def _evaluate(accelerator, module, loader, n_labels: int) -> dict[str, float]:
    student = accelerator.unwrap_model(module).student
    student.eval()
    preds, ys = [], []
    with torch.no_grad():
        for batch in loader:
            logits = student(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                             batch.get("lexical")).logits
            p, y = accelerator.gather_for_metrics((logits.argmax(dim=-1), batch["labels"]))
            preds.append(p.cpu())
            ys.append(y.cpu())
    student.train()
    return classification_metrics(torch.cat(ys).numpy(), torch.cat(preds).numpy(), n_labels)


# --------------------------------------------------------------------------------------- predict
@torch.no_grad()
def predict(model: Student, tokenizer, df, batch_size: int = 64):
    """Class probabilities, r and h_cls for every row of df (one process, the model's device).

    Returns (probs (N, C), r (N, d_out), h_cls (N, d_model)) as float32 arrays; r is the latent
    reasoning vector (h_cls for the plain student, see :class:`Student`).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs, rs, clss = [], [], []
    for start in tqdm(range(0, len(df), batch_size), desc="student predict", leave=False):
        chunk = df.iloc[start:start + batch_size]
        enc = tokenize_pairs(tokenizer, chunk["query"], chunk["title"], model.max_length, padding=True,
                             return_tensors="pt")
        x = None
        if model.lexical_tables is not None:
            x = torch.from_numpy(model.lexical_features(chunk["query"].tolist(), chunk["title"].tolist())).to(device)
        out = model(enc["input_ids"].to(device), enc["attention_mask"].to(device),
                    enc["token_type_ids"].to(device) if "token_type_ids" in enc else None, x)
        probs.append(torch.softmax(out.logits.float(), dim=-1).cpu())
        rs.append(out.r.float().cpu())
        clss.append(out.h_cls.float().cpu())
    model.train(was_training)
    if not probs:
        return (np.zeros((0, len(model.labels)), np.float32), np.zeros((0, model.r_dim), np.float32),
                np.zeros((0, model.d_model), np.float32))
    return (torch.cat(probs).numpy(), torch.cat(rs).numpy(), torch.cat(clss).numpy())

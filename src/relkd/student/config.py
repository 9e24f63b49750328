"""Knobs of the LRKD student and the table of student variants (LRKD, ablations, baselines)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from relkd.section import Section

ExtractorKind = Literal["none", "mlp", "poly", "gat"]
AuxKind = Literal["none", "ced_kd", "mkd", "crsd"]


class VariantConfig(Section):
    """One student variant: which extractor, whether the guidance loss is on, which auxiliary
    training-only objective (a baseline from the paper or seed 003) is added."""

    extractor: ExtractorKind = Field(
        "gat", description="latent reasoning extractor R(H, M): none (plain cross-encoder), mlp, poly, gat"
    )
    guidance: bool = Field(True, description="add lambda * MSE(r, e_cot) (needs rationale embeddings)")
    lam: float | None = Field(
        None, ge=0, description="guidance weight override; None takes StudentConfig.lam"
    )
    r_from_cls: bool = Field(
        False,
        description="ablation 'w/o latent reasoning extractor': r := h_cls for both classification "
        "and guidance (logits = Linear(h_cls); guidance on a linear projection of h_cls when the "
        "rationale encoder's width differs, identity when equal)",
    )
    aux: AuxKind = Field(
        "none",
        description="training-only auxiliary objective: ced_kd (decoder reconstructs the rationale), "
        "mkd (CRF over BIO tags of rationale words in the input), crsd (InfoNCE between plain and "
        "rationale-augmented inputs, seed 003); none of them is used at inference",
    )
    aux_weight: float = Field(
        1.0, ge=0, description="weight of the ced_kd / mkd auxiliary loss (CE + aux_weight * aux)"
    )
    crsd_weight: float = Field(1.0, ge=0, description="weight of the CRSD term (InfoNCE + CE of the augmented view)")
    crsd_temperature: float = Field(0.1, gt=0, description="InfoNCE temperature of CRSD")

    @model_validator(mode="after")
    def _consistent(self) -> "VariantConfig":
        if self.r_from_cls and self.extractor != "none":
            raise ValueError(
                f"r_from_cls replaces the extractor with h_cls, so extractor must be 'none' (got {self.extractor!r})"
            )
        if self.r_from_cls and not self.guidance:
            raise ValueError("r_from_cls without guidance is the plain student: set extractor='none', "
                             "r_from_cls=false, guidance=false instead")
        if self.guidance and self.extractor == "none" and not self.r_from_cls:
            raise ValueError(
                "guidance needs a latent vector r: give an extractor (mlp, poly, gat) or set r_from_cls=true"
            )
        return self

    @property
    def needs_embeddings(self) -> bool:
        return self.guidance

    @property
    def needs_rationales(self) -> bool:
        return self.aux != "none"


def named_variants() -> dict[str, VariantConfig]:
    """Every named student: the paper's Table 1 rows (plain, the three LRKD extractors, CED-KD, MKD), CRSD from
    seed 003, the Table 4 ablations (no extractor, no guidance) and LRKD-GAT combined with CRSD. Profiles that
    name one of them (profiles/ablations.yaml, profiles/paper.yaml) must define it the same way (a test holds it)."""
    v = VariantConfig
    return {
        "plain": v(extractor="none", guidance=False),
        "lrkd_mlp": v(extractor="mlp"),
        "lrkd_poly": v(extractor="poly"),
        "lrkd_gat": v(extractor="gat"),
        "no_extractor": v(extractor="none", r_from_cls=True),
        "no_guidance": v(extractor="gat", guidance=False, lam=0.0),
        "ced_kd": v(extractor="none", guidance=False, aux="ced_kd"),
        "mkd": v(extractor="none", guidance=False, aux="mkd"),
        "crsd": v(extractor="none", guidance=False, aux="crsd"),
        "lrkd_gat+crsd": v(extractor="gat", aux="crsd"),
    }


# A single-perspective teacher's student is a row named SINGLE_PREFIX + perspective (models/student_single/<p>).
SINGLE_PREFIX = "single_"
_AUX = {"ced_kd": "CED-KD: a decoder reconstructs the rationale in training (dropped at inference)",
        "mkd": "MKD: a CRF tags the rationale's words in the input in training",
        "crsd": "CRSD: InfoNCE pulls the plain view towards the rationale-augmented one in training"}


def describe(variant: VariantConfig, lam: float) -> str:
    """One line saying what a variant's student is (its extractor, guidance and auxiliary objective)."""
    if variant.r_from_cls:
        parts = [f"no extractor: h_cls itself guided (λ {lam:g}) towards the rationale embedding"]
    elif variant.extractor == "none":
        parts = ["cross-encoder on the gold labels"]
    else:
        guided = f"guided (λ {lam:g}) towards the rationale embedding" if variant.guidance else "no guidance loss"
        parts = [f"{variant.extractor} latent reasoning extractor, {guided}"]
    if variant.aux != "none":
        parts.append(_AUX[variant.aux])
    return "; ".join(parts)


# The embedded default trains Table 1 and CRSD; the ablation rows cost ~5 of the 25 minutes a whole `dvc repro`
# may take on 2 cores, and are one `relkd profile ablations` away.
DEFAULT_VARIANTS = ("plain", "lrkd_mlp", "lrkd_poly", "lrkd_gat", "ced_kd", "mkd", "crsd")


def default_variants() -> dict[str, VariantConfig]:
    """The variants params.yaml trains: ``DEFAULT_VARIANTS`` of :func:`named_variants`."""
    named = named_variants()
    return {name: named[name] for name in DEFAULT_VARIANTS}


class StudentConfig(Section):
    """Training of the LRKD student (paper section 3.3 and appendix B). Defaults are the embedded
    CPU scale (a few hundred pairs, 2 cores); the paper's values are in profiles/paper.yaml."""

    backbone: str = Field(
        "pypi:all-MiniLM-L6-v2",
        description="BERT-family encoder, a name for relkd.models.resolve or a hub id",
    )
    max_length: int = Field(64, ge=8, description="max tokens of '[CLS] query [SEP] title [SEP]'")
    hidden: int = Field(128, ge=1, description="extractor hidden size (MLP and GAT)")
    codes: int = Field(32, ge=1, description="Poly-encoder context codes K")
    pooling: Literal["cls", "mean"] = Field(
        "mean", description="h_cls, the head's view of the pair: the raw [CLS] state (the paper's) or the masked mean "
        "of the token states (how sentence-transformers backbones such as all-MiniLM-L6-v2 were trained; "
        "their [CLS] state and pooler carry little before fine-tuning)")
    lexical: bool = Field(
        True, description="add a linear head over the pair's lexical features (relkd.lexical: overlap, TF-IDF, "
        "BM25, numbers; tables fitted on the training split), warm-started from the lexical peer's logistic "
        "regression, the token head from zero: the student starts as that peer and learns what the tokens add "
        "(the paper's student is a plain cross-encoder)")
    lam: float = Field(0.1, ge=0, description="guidance loss weight lambda")
    guidance_normalize: bool = Field(
        True,
        description="L2-normalise both sides of the guidance loss, r and e_cot: ||r/|r| - e/|e| ||^2 = "
        "2 - 2 cos(r, e) in [0, 4]: BGE-M3's targets are unit-norm but r is not, and unnormalised the loss acts on "
        "the raw states' norm, so with gradient clipping the step follows the guidance, not CE",
    )
    guidance_into_backbone: bool = Field(
        False, description="true (the paper's LRKD): the guidance's gradient reaches the backbone; false: it shapes "
        "the extractor only (r for the guidance is recomputed from the backbone's states cut from the graph; the "
        "head's r still trains the backbone through CE); why false here: docs/results.md")
    lr: float = Field(3e-4, gt=0, description="AdamW learning rate")
    head_lr: float | None = Field(
        None, gt=0, description="learning rate of every parameter outside the backbone (the extractor, the heads, "
        "the guidance projection, the training-only heads); None = lr. A few dozen steps at the backbone's lr move "
        "a freshly initialised extractor by a few percent of its weights: too little to fit e_cot")
    epochs: int = Field(3, ge=1, description="training epochs; the epoch best on validation macro-F1 is kept")
    train_rows: Literal["all", "annotated"] = Field(
        "all", description="all = every training pair, the guidance loss only where the teacher wrote a "
        "rationale (the students may see more pairs than the teacher annotates); annotated = only those")
    rationale_rows: Literal["all", "agreeing"] = Field(
        "all", description="which teacher rationales the students learn from (LRKD's guidance target and the "
        "CED-KD / MKD / CRSD texts): all = every annotated pair's; agreeing = only those whose teacher "
        "label equals the pair's gold label (a rationale for another label argues against the class the pair "
        "is trained on; with a teacher at chance most of them do)")
    batch_size: int = Field(32, ge=1, description="per-process batch size")
    num_processes: int = Field(
        1, ge=1, description="processes each student stage trains on (dvc.yaml runs it with `accelerate launch`; one "
        "per GPU, DDP; gradients all-reduced, the global batch is num_processes x batch_size; rank 0 tracks, saves and "
        "tests)")
    eval_batch_size: int = Field(64, ge=1, description="batch size for validation and predict")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="linear warmup share of steps")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    rationale_max_length: int = Field(
        48, ge=4, description="max rationale tokens for CED-KD's decoder and CRSD's augmented input"
    )
    seeds: list[int] = Field(default_factory=lambda: [13], description="one student per seed")
    variants: dict[str, VariantConfig] = Field(
        default_factory=default_variants,
        description="student variants by name: plain, lrkd_mlp, lrkd_poly, lrkd_gat, ced_kd, mkd, crsd (the "
        "ablations no_extractor, no_guidance and lrkd_gat+crsd: profiles/ablations.yaml)",
    )

    single_variant: str = Field(
        "lrkd_gat", description="the recipe (a name in `variants`) of the students of the single-perspective teachers "
        "(teacher.single: one student each, the Avg. Ensemble's members) and of LRKD-Combined")
    ensembles: list[str] = Field(
        default_factory=list, description="Avg. Ensemble rows by name: the class probabilities of the single-"
        "perspective teachers' students averaged at inference, registered, exported and served as one ONNX graph; "
        "[] = none")
    combined: list[str] = Field(
        default_factory=list, description="LRKD-Combined rows by name: a student.single_variant student guided by "
        "the encoder's embedding of the single-perspective teachers' rationales of a pair concatenated "
        "(teacher.single.perspectives in order, joined by combined_separator); [] = none")
    combined_separator: str | None = Field(
        None, description="text between the concatenated rationales of LRKD-Combined; None = the rationale "
        "encoder's separator token with a space either side")

    @model_validator(mode="after")
    def _table6_rows(self) -> "StudentConfig":
        names = [*self.ensembles, *self.combined]
        clash = sorted({n for n in names if n in self.variants or names.count(n) > 1 or n.startswith(SINGLE_PREFIX)})
        if clash:
            raise ValueError(f"ensembles and combined name rows of the student table ({clash} clash with a variant, "
                             f"each other or the '{SINGLE_PREFIX}' rows of the single-perspective students): rename")
        return self

    def row_description(self, name: str, perspectives) -> str:
        """What a student-table row is: a variant trained on the MPCoT teacher's rationales, an Avg. Ensemble or
        LRKD-Combined of the single-perspective teachers `perspectives`."""
        single = self.variants.get(self.single_variant)
        if name in self.ensembles:
            return (f"Avg. Ensemble: the mean class probabilities of {len(perspectives)} {self.single_variant} "
                    f"students, each trained on one single-perspective teacher's rationales "
                    f"({', '.join(perspectives)})")
        if name in self.combined:
            return (f"LRKD-Combined: {self.single_variant} ({describe(single, self.lam_for(single))}) on the "
                    f"embedding of the {len(perspectives)} single-perspective teachers' rationales concatenated")
        variant = self.variants[name]
        return describe(variant, self.lam_for(variant)) + (
            "; the MPCoT teacher's rationales" if variant.guidance or variant.aux != "none" else "")

    @property
    def table6_rows(self) -> list[str]:
        """The student rows beyond `variants` that register and compare take in: the ensembles, then LRKD-Combined."""
        return [*self.ensembles, *self.combined]

    def lam_for(self, variant: VariantConfig) -> float:
        """The guidance weight a variant trains with (0 when its guidance is off)."""
        if not variant.guidance:
            return 0.0
        return self.lam if variant.lam is None else variant.lam

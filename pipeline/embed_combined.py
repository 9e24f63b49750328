"""Stage `embed_combined@<name>`: LRKD-Combined's guidance target (paper appendix D.2): for every pair the
single-perspective teachers annotated, their rationales concatenated (teacher.single.perspectives in order, joined by
student.combined_separator) and embedded once by the frozen encoder, as the `embed` stage embeds one teacher's."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.common import setup, stage_command
from relkd.embed import combined_rationales, separator
from relkd.embed.store import write_embeddings
from relkd.embed.targets import embed_records
from relkd.io import read_jsonl, write_json, write_jsonl


def run(params_path: str, single: str, out: str, metrics_path: str) -> dict:
    params = setup(params_path)
    perspectives = params.teacher.single.perspectives
    notes = [{r["pair_id"]: r for r in read_jsonl(Path(single) / p / "rationales.jsonl")} for p in perspectives]
    sep = params.student.combined_separator
    if sep is None:
        sep = separator(params.embed.model, params.embed.max_length)
    texts = combined_rationales([{pid: r["rationale"] for pid, r in n.items()} for n in notes], sep)
    records = []
    for pid, text in texts.items():
        # The label the teachers agree on (a majority of them), else none: what student.rationale_rows: agreeing reads.
        (label, votes), = Counter(n[pid]["label"] for n in notes).most_common(1)
        records.append({"pair_id": pid, "rationale": text, "gold": notes[0][pid]["gold"],
                        "label": label if votes * 2 > len(notes) else None, "perspectives": perspectives})
    Path(out).mkdir(parents=True, exist_ok=True)
    write_jsonl(Path(out) / "rationales.jsonl", records)
    vectors, meta, metrics = embed_records(records, params.embed, params.peers.e_cot_probe)
    write_embeddings(out, vectors, meta)
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.single, a.out, a.metrics)


main = stage_command(__doc__, _main, ("single", "folder of the single-perspective teachers' annotations "
                                                "(<perspective>/rationales.jsonl)"),
                     ("out", "embeddings folder (rationales.npy, meta.json and the joined rationales.jsonl)"),
                     ("metrics", "metrics JSON (the e_cot label probe)"))

if __name__ == "__main__":
    main()

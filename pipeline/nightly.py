"""Stage `nightly`: the batch the `score` stage scores (the embedded generated one, or score.batch)."""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.common import setup, stage_command
from relkd.data.nightly import nightly_batch
from relkd.io import atomic_path, write_parquet


def run(params_path: str, out: str) -> int:
    params = setup(params_path)
    cfg = params.score
    if cfg.batch:
        with atomic_path(out) as tmp:
            shutil.copyfile(cfg.batch, tmp)
        return -1
    df = nightly_batch(params.data.catalogue, cfg.seed, cfg.n_rows, cfg.labelled_share, cfg.bad_rows)
    write_parquet(out, df)
    return len(df)


def _main(a) -> None:
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    run(a.params, a.out)


main = stage_command(__doc__, _main, ("out", "batch file to write"))

if __name__ == "__main__":
    main()

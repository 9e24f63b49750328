"""The whole `dvc repro` on the tiny profile in a temporary copy of the repository."""
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo, sh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = copy_repo(tmp_path_factory.mktemp("repo"))
    sh("relkd profile tiny", root)
    sh("git -c user.email=t@t -c user.name=t commit -qam 'tiny profile'", root)
    res = sh("dvc repro", root)
    return root, res


def md5s(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_repro_builds_prepared_data(repo):
    root, res = repo
    prepared = root / "data" / "prepared"
    for split in ("train", "valid", "test"):
        assert (prepared / f"{split}.parquet").stat().st_size > 0
    labels = json.loads((prepared / "labels.json").read_text())["labels"]
    assert len(labels) == 6
    metrics = json.loads((root / "metrics" / "prepare.json").read_text())
    assert metrics["rows_in"] == 16 * 3
    assert sum(metrics["rows"].values()) + metrics["rows_rejected"] == metrics["rows_in"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert "prepare" in lock["stages"]
    # outputs are git-ignored and DVC-tracked
    ignored = sh(["git", "check-ignore", "data/prepared"], root, check=False)
    assert ignored.returncode == 0


def test_second_repro_does_nothing(repo):
    root, _ = repo
    before = md5s(root / "data" / "prepared")
    res = sh("dvc repro", root)
    assert "didn't change" in res.stdout or "Data and pipelines are up to date" in res.stdout
    assert "Running stage" not in res.stdout
    assert md5s(root / "data" / "prepared") == before


def test_param_change_reruns_only_what_reads_it(repo):
    root, _ = repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tracking"]["experiment"] = "other"  # prepare does not declare `tracking`
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Running stage 'prepare'" not in sh("dvc repro", root).stdout
    params["data"]["seed"] = 99
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Running stage 'prepare'" in sh("dvc repro", root).stdout


def test_remote_push_then_pull_into_fresh_clone(repo, tmp_path):
    root, _ = repo
    remote = tmp_path / "remote"
    sh(["dvc", "remote", "add", "-d", "-f", "storage", str(remote)], root)
    sh("git add -A && git -c user.email=t@t -c user.name=t commit -qm 'lock and remote'", root)
    sh("dvc push", root)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    assert not (clone / "data" / "prepared").exists()
    sh("dvc pull", clone)
    assert md5s(clone / "data" / "prepared") == md5s(root / "data" / "prepared")
    assert "up to date" in sh("dvc status", clone).stdout

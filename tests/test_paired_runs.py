"""bench/paired_runs.py: paired Δ between two sweeps that differ in something other than λ."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("paired_runs", ROOT / "bench" / "paired_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _job(sweep: Path, name: str, seed: int, lam: float, test: float, val: float, status: str = "ok") -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- drloc.lambda_drloc={lam}\n- seed={seed}\n")
    results = {"status": status, "seed": seed, "lambda_drloc": lam, "test_acc1": test, "val_acc1": val}
    (job / "results.json").write_text(json.dumps(results))


@pytest.fixture
def sweeps(tmp_path):
    base, treat = tmp_path / "base", tmp_path / "treat"
    for seed, (test, val) in enumerate([(0.50, 0.40), (0.60, 0.50), (0.55, 0.45)]):
        _job(base, str(seed), seed, 0, test, val)
        _job(base, str(3 + seed), seed, 1, 0.99, 0.99)  # a DRLoc run the filter must drop
    # seed order differs from the baseline's; seed 2 failed, so only seeds 0 and 1 pair
    _job(treat, "0", 1, 0, 0.63, 0.50)
    _job(treat, "1", 0, 0, 0.52, 0.44)
    _job(treat, "2", 2, 0, 0.90, 0.90, status="failed")
    return base, treat


def test_pairs_on_the_seed_after_the_filter(sweeps, tmp_path, capsys):
    bench = _bench()
    base, treat = sweeps
    out = tmp_path / "out.json"
    rc = bench.main(
        ["--label", "L", "--baseline", str(base), "--treatment", str(treat)]
        + ["--where", "lambda_drloc=0", "--json", str(out)]
    )
    assert rc == 0
    (row,) = json.loads(out.read_text())
    # treatment order: seed 1 then seed 0; Δ = 0.63 - 0.60, 0.52 - 0.50
    assert row["test_acc1"]["delta"] == pytest.approx([0.03, 0.02])
    assert row["val_acc1"]["delta"] == pytest.approx([0.0, 0.04])
    assert [s for s, _ in row["test_acc1"]["baseline"]] == [0, 1, 2]
    table = capsys.readouterr().out
    assert "| L |" in table and "+2.50 ± 0.71 (n=2)" in table and "+3.00, +2.00" in table


def test_two_runs_of_one_seed_are_refused_not_mixed(sweeps, tmp_path, capsys):
    bench = _bench()
    base, treat = sweeps
    with pytest.raises(ValueError, match="seed 0, 1, 2"):
        bench.compare("L", base, treat, {})  # λ = 0 and λ = 1 runs of each seed in the baseline dir
    rc = bench.main(
        ["--label", "L", "--baseline", str(base), "--treatment", str(treat), "--json", str(tmp_path / "o.json")]
    )
    assert rc == 2 and "--where" in capsys.readouterr().err and not (tmp_path / "o.json").exists()


def test_nothing_to_pair_exits_2_with_a_message(sweeps, tmp_path, capsys):
    bench = _bench()
    base, treat = sweeps
    rc = bench.main(
        ["--label", "L", "--baseline", str(base), "--treatment", str(treat)]
        + ["--where", "lambda_drloc=1", "--json", str(tmp_path / "o.json")]
    )
    assert rc == 2 and not (tmp_path / "o.json").exists()
    assert "nothing to pair" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        bench.main(["--label", "L", "--baseline", str(base), "--treatment", str(treat), "--where", "lambda_drloc"])
    assert err.value.code == 2


def test_a_folder_that_is_not_a_sweep_dir_exits_2(sweeps, tmp_path, capsys):
    bench = _bench()
    _, treat = sweeps
    rc = bench.main(["--label", "L", "--baseline", str(tmp_path / "nope"), "--treatment", str(treat)])
    assert rc == 2 and "is not a folder" in capsys.readouterr().err

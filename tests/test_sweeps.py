"""Sweeps and paper tables: multiruns through Hydra's launchers and sweepers, and make_table on their run folders.

The end-to-end tests run ``run.py -m`` in a subprocess on a tiny problem (2 steps, 1 face) and check what the
aggregator reads; the table tests recompute every number directly from the results.csv files.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep
from hydra.utils import instantiate

from pulse import tables

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = ["solver.steps=2", "data.num=1", "data.factors=[8]", "progress=false"]
SWEEP_EXTRA = "the sweep plugins are not installed: pip install -e '.[sweep]' (the dev extra includes them)"


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


needs_joblib = pytest.mark.skipif(not has_module("hydra_plugins.hydra_joblib_launcher"), reason=SWEEP_EXTRA)
needs_submitit = pytest.mark.skipif(not has_module("hydra_plugins.hydra_submitit_launcher"), reason=SWEEP_EXTRA)
needs_optuna = pytest.mark.skipif(not has_module("hydra_plugins.hydra_optuna_sweeper"), reason=SWEEP_EXTRA)


def run_cli(*args: str, cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` from the repository root; fails the test with the tail of its output."""
    # Module-scoped fixtures run before conftest's per-test environment, so isolate the subprocess here too.
    env = {**os.environ, "WANDB_MODE": "disabled", "PULSE_CACHE": str(cache)}
    result = subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"run.py {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def make_table_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/make_table.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def job_folders(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def overrides(folder: Path) -> list[str]:
    return yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())


def rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def finite_values(all_rows: list[dict[str, str]], column: str) -> list[float]:
    """What the table must average: present, finite cells only."""
    values = [float(r[column]) for r in all_rows if r.get(column, "") != ""]
    return [v for v in values if math.isfinite(v)]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """A real 2 x 2 multirun (loss x seed) with the basic launcher; every job solves one face at x4 and x8."""
    sweep = tmp_path_factory.mktemp("grid") / "sweep"
    cache = tmp_path_factory.mktemp("cache")
    run_cli(
        "-m",
        "loss=l2,l2+geocross",
        "seed=0,1",
        "solver.steps=2",
        "data.num=1",
        "data.factors=[4,8]",
        "progress=false",
        f"hydra.sweep.dir={sweep}",
        cache=cache,
    )
    return sweep


def test_basic_multirun_writes_one_run_folder_per_job(grid):
    jobs = job_folders(grid)
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    combos = set()
    for job in jobs:
        assert (job / "summary.json").is_file() and (job / "config.yaml").is_file()
        assert [r["name"] for r in rows(job)] == ["face000_x4", "face000_x8"]
        job_overrides = overrides(job)
        combos.add(
            (
                next(o for o in job_overrides if o.startswith("loss=")),
                next(o for o in job_overrides if o.startswith("seed=")),
            )
        )
    assert combos == {(f"loss={loss}", f"seed={seed}") for loss in ("l2", "l2+geocross") for seed in (0, 1)}
    assert (grid / "multirun.yaml").is_file()


def test_table_pools_seeds_and_matches_the_csvs(grid):
    runs = tables.find_runs(grid)
    assert len(runs) == 4
    table = tables.aggregate(runs)  # default grouping: the varying overrides, seeds pooled
    assert table.by == ["loss"]
    assert [g.values["loss"] for g in table.groups] == ["l2", "l2+geocross"]
    for group in table.groups:
        folders = [j for j in job_folders(grid) if f"loss={group.values['loss']}" in overrides(j)]
        expected = [r for folder in folders for r in rows(folder)]
        assert len(group.runs) == 2 and group.samples == len(expected) == 4
        assert group.successes == sum(r["success"] == "True" for r in expected)
        for metric in ["downscale_error", "psnr_hr", "seconds"]:
            values = finite_values(expected, metric)
            stat = group.column(metric)
            assert stat.n == len(values) and stat.missing == 4 - len(values)
            assert stat.mean == pytest.approx(statistics.fmean(values))
            assert stat.std == pytest.approx(statistics.stdev(values))
        # Across runs: the std of the per-run means (seed-to-seed variation).
        run_means = [statistics.fmean(finite_values(rows(f), "downscale_error")) for f in folders]
        by_runs = group.column("downscale_error", spread="runs")
        assert by_runs.mean == pytest.approx(statistics.fmean(run_means))
        assert by_runs.std == pytest.approx(statistics.stdev(run_means))


def test_table_groups_by_override_and_by_results_column(grid):
    per_seed = tables.make_table([grid], by=["loss", "seed"])
    assert [(g.values["loss"], g.values["seed"], g.samples) for g in per_seed.groups] == [
        ("l2", "0", 2),
        ("l2", "1", 2),
        ("l2+geocross", "0", 2),
        ("l2+geocross", "1", 2),
    ]
    per_scale = tables.make_table([grid], by=["scale"])  # a results column: each run feeds both rows
    assert [(g.values["scale"], len(g.runs), g.samples) for g in per_scale.groups] == [("4", 4, 4), ("8", 4, 4)]
    x8 = [r for job in job_folders(grid) for r in rows(job) if r["scale"] == "8"]
    assert per_scale.groups[1].column("downscale_error").mean == pytest.approx(
        statistics.fmean(finite_values(x8, "downscale_error"))
    )
    # A default key (not overridden) resolves from config.yaml: the chosen option, or the value.
    by_default_key = tables.make_table([grid], by=["downscale", "solver.steps"])
    assert [(g.values["downscale"], g.values["solver.steps"], g.samples) for g in by_default_key.groups] == [
        ("bicubic", "2", 8)
    ]


def test_make_table_script_formats(grid, tmp_path):
    result = make_table_cli(str(grid), "--format", "csv")
    assert result.returncode == 0, result.stderr
    parsed = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["loss"], r["runs"], r["samples"]) for r in parsed] == [("l2", "2", "4"), ("l2+geocross", "2", "4")]
    expected = [r for j in job_folders(grid) if "loss=l2" in overrides(j) for r in rows(j)]
    assert float(parsed[0]["downscale_error_mean"]) == pytest.approx(
        statistics.fmean(finite_values(expected, "downscale_error"))
    )
    assert int(parsed[0]["successes"]) == sum(r["success"] == "True" for r in expected)

    out = tmp_path / "table.md"
    result = make_table_cli(str(grid), "--by", "loss", "--metrics", "downscale_error,psnr_hr", "--out", str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert text.startswith("<!-- generated by: python scripts/make_table.py ")
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == "| loss | runs | n | success | downscale_error | psnr_hr | s/img |"
    assert len(lines) == 2 + 2 and lines[2].startswith("| l2 | 2 | 4 | ")

    latex = make_table_cli(str(grid), "--format", "latex", "--metrics", "downscale_error").stdout
    assert "\\toprule" in latex and "downscale\\_error" in latex and "$\\pm$" in latex and "\\%" in latex

    error = make_table_cli(str(grid), "--by", "no_such_key")
    assert error.returncode == 1 and "no run defines 'no_such_key'" in error.stderr
    error = make_table_cli(str(grid), "--metrics", "no_such_metric")
    assert error.returncode == 1 and "unknown metric" in error.stderr


def test_plots(grid, tmp_path):
    pytest.importorskip("matplotlib")
    written = tables.plot(tables.make_table([grid], by=["loss", "seed"]), tmp_path)
    names = {p.name for p in written}
    assert {"success_vs_steps.png", "success_rate_vs_seed.png", "downscale_error_vs_seed.png"} <= names
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in written)
    assert tables.success_curve([0, 2, -1, 5], 4) == [0.25, 0.25, 0.5, 0.5]


def write_run(folder: Path, result_rows: list[dict[str, str]], run_overrides: list[str] | None, config: dict) -> None:
    folder.mkdir(parents=True)
    columns = list(dict.fromkeys(key for row in result_rows for key in row))
    with (folder / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(result_rows)
    if run_overrides is not None:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(run_overrides))
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "summary.json").write_text("{}")


def sample(name: str, success: bool, error: str, psnr_hr: str, first: str = "-1") -> dict[str, str]:
    return {
        "name": name,
        "success": str(success),
        "downscale_error": error,
        "first_step_at_eps": first,
        "seconds": "0.5",
        "psnr_hr": psnr_hr,
    }


def test_missing_values_are_excluded_and_counted_never_zero(tmp_path):
    write_run(
        tmp_path / "a",
        [
            sample("f0", True, "0.001", "20", "3"),
            sample("f1", False, "0.004", ""),  # no ground truth: empty cell
            sample("f2", False, "", "nan"),  # a sample stopped on NaN
            sample("f3", True, "0.002", "inf", "7"),
        ],
        ["optimizer.lr=0.1"],
        {"tags": []},
    )
    table = tables.make_table([tmp_path])
    group = table.groups[0]
    psnr = group.column("psnr_hr")
    assert (psnr.mean, psnr.std, psnr.n, psnr.missing) == (20.0, None, 1, 3)
    error = group.column("downscale_error")
    assert error.mean == pytest.approx(0.007 / 3) and error.missing == 1
    first = group.column("first_step_at_eps")  # -1 means never reached: excluded, not averaged
    assert (first.mean, first.n, first.missing) == (5.0, 2, 2)
    text = tables.to_markdown(table)
    assert "20 (3 missing)" in text
    assert "psnr_hr missing for 3 of 4 samples" in text
    assert group.successes == 2 and "50% (2/4)" in text
    csv_row = next(csv.DictReader(io.StringIO(tables.to_csv(table))))
    assert csv_row["psnr_hr_mean"] == "20.0" and csv_row["psnr_hr_missing"] == "3" and csv_row["psnr_hr_std"] == ""


def test_settings_come_from_overrides_then_tags_then_config(tmp_path):
    config = {"tags": ["loss=l2+geocross", "optimizer=spherical_adam"], "solver": {"steps": 100, "eps": 0.002}}
    write_run(tmp_path / "default", [sample("f0", True, "0.001", "20")], [], config)
    write_run(tmp_path / "l2", [sample("f0", False, "0.003", "18")], ["loss=l2", "solver.eps=2e-3"], config)
    write_run(tmp_path / "api_run", [sample("f0", True, "0.002", "19")], None, {**config, "tags": ["loss=l2"]})
    runs = tables.find_runs(tmp_path)
    assert tables.varying_keys(runs) == ["loss"]  # solver.eps=2e-3 equals the config's 0.002
    table = tables.aggregate(runs)
    assert [(g.values["loss"], g.samples) for g in table.groups] == [("l2", 2), ("l2+geocross", 1)]
    assert tables.canonical("1e-3") == tables.canonical(0.001) == "0.001"
    assert tables.canonical("[4,8]") == tables.canonical([4, 8]) == "[4, 8]"
    assert tables.canonical("False") == "false" and tables.canonical("'a b'") == "a b"
    assert tables.parse_override("+loss.terms.l1.weight=5") == ("loss.terms.l1.weight", "5")
    assert tables.parse_override("~logger") is None


def test_non_metric_columns_mirror_the_results_fields():
    from pulse.outputs import RESULT_FIELDS

    assert set(tables.NON_METRIC_COLUMNS) | set(tables.CORE_METRICS) == set(RESULT_FIELDS)


@needs_joblib
@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "loss=l2,l2+geocross", *TINY,
        f"hydra.sweep.dir={sweep}", cache=tmp_path / "cache",
    )  # fmt: skip
    assert [j.name for j in job_folders(sweep)] == ["0", "1"]
    table = tables.make_table([sweep])
    assert [(g.values["loss"], g.samples) for g in table.groups] == [("l2", 1), ("l2+geocross", 1)]


@needs_submitit
@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(
        "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "solver.eps=2e-3,1e-3", *TINY,
        f"hydra.sweep.dir={sweep}", cache=tmp_path / "cache",
    )  # fmt: skip
    assert (sweep / ".submitit").is_dir()  # submitit's own logs and pickles live beside the job folders
    table = tables.make_table([sweep])
    assert table.by == ["solver.eps"]
    assert [(g.values["solver.eps"], g.samples) for g in table.groups] == [("0.001", 1), ("0.002", 1)]


def search_space() -> dict[str, str]:
    return yaml.safe_load((CONFIGS / "hparams_search" / "pulse_optuna.yaml").read_text())["hydra"]["sweeper"]["params"]


@needs_optuna
def test_optuna_search_in_memory(tmp_path):
    sweep = tmp_path / "sweep"
    # A continuous objective and direction=minimize, so the best trial is checked against the trials' own values.
    run_cli(
        "-m", "hparams_search=pulse_optuna", "hydra.sweeper.n_trials=2", "objective=mean_downscale_error",
        "hydra.sweeper.direction=minimize", *TINY, f"hydra.sweep.dir={sweep}", cache=tmp_path / "cache",
    )  # fmt: skip
    trials = job_folders(sweep)
    assert len(trials) == 2
    values = []
    for trial in trials:
        sampled = dict(o.split("=", 1) for o in overrides(trial))
        assert set(search_space()) <= set(sampled)
        assert 0.05 <= float(sampled["optimizer.lr"]) <= 1.0
        assert 5e-4 <= float(sampled["loss.eps"]) <= 5e-3
        assert 0 <= int(sampled["solver.num_trainable_noise_layers"]) <= 8
        values.append(yaml.safe_load((trial / "summary.json").read_text())["mean_downscale_error"])
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(values))
    assert not list(tmp_path.glob("*.db")) and not list(ROOT.glob("*.db"))  # in memory: no storage file
    table = tables.make_table([sweep])
    assert set(table.by) == set(search_space()) and len(table.groups) == 2


@needs_optuna
def test_optuna_sqlite_storage_resumes_a_study(tmp_path):
    import optuna

    sqlalchemy = pytest.importorskip("sqlalchemy")
    if int(sqlalchemy.__version__.split(".")[0]) >= 2:
        pytest.skip(f"optuna {optuna.__version__} sqlite storage needs sqlalchemy<2 (the sweep extra pins it)")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for _ in range(2):  # two sweeps on the same study name continue it
        study = optuna.create_study(study_name="pulse", storage=storage, direction="maximize", load_if_exists=True)
        study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=1)
    assert len(optuna.load_study(study_name="pulse", storage=storage).trials) == 2


def compose_cfg(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def sweep_values(key: str, spec: str) -> list[str]:
    """The ends of an interval or every choice of a Hydra sweep string, as plain overrides."""
    override = OverridesParser.create().parse_overrides([f"{key}={spec}"])[0]
    value = override.value()
    if isinstance(value, IntervalSweep):
        return [f"{key}={value.start}", f"{key}={value.end}"]
    if isinstance(value, ChoiceSweep):
        return [f"{key}={choice}" for choice in value.list]
    return [f"{key}={part}" for part in spec.split(",")]  # a basic-sweeper list: a,b,c


def check_builds(cfg) -> None:
    loss = instantiate(cfg.loss)
    instantiate(cfg.optimizer)
    assert loss.eps == cfg.loss.eps


@needs_optuna
def test_search_space_is_valid_for_the_config():
    cfg = compose_cfg("hparams_search=pulse_optuna", hydra=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "maximize"
    assert set(cfg.hydra.sweeper.params) == {
        "optimizer.lr",
        "loss.terms.geocross.weight",
        "solver.num_trainable_noise_layers",
        "loss.eps",
    }
    for key, spec in cfg.hydra.sweeper.params.items():
        for value in sweep_values(key, spec):
            check_builds(compose_cfg(value))  # a key the config lacks would fail here, not after a long search


def test_wandb_sweep_drives_run_py_with_hydra_overrides():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    from pulse.outputs import RunSummary
    from pulse.runner import log_run_end

    spec = yaml.safe_load((CONFIGS / "wandb_sweep" / "pulse.yaml").read_text())
    assert spec["program"] == "run.py" and (ROOT / spec["program"]).is_file()
    assert spec["command"][:3] == ["${env}", "${interpreter}", "${program}"]
    assert spec["command"][-1] == "${args_no_hyphens}"
    assert set(spec["parameters"]) == set(search_space())  # the same space as the Optuna search
    fixed = [c for c in spec["command"][3:-1] if not c.startswith("hydra.")]
    for end in ("min", "max"):
        args = create_sweep_command_args({"args": {k: {"value": p[end]} for k, p in spec["parameters"].items()}})
        check_builds(compose_cfg(*fixed, *args["args_no_hyphens"]))

    # The sweep's metric is a key the run actually sends to its loggers.
    sent: dict[str, float] = {}

    class Recorder:
        def log_metrics(self, metrics, step=None):
            sent.update(metrics)

        def save(self):
            pass

        def finalize(self, status):
            pass

    log_run_end([Recorder()], RunSummary(samples=2, successes=1, success_rate=0.5, mean_downscale_error=0.1), [], None)
    assert sent[spec["metric"]["name"]] == 0.5 and spec["metric"]["goal"] == "maximize"


def test_experiment_configs_compose_and_have_a_readme():
    names = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
    assert {"ablation_loss_optimizer", "paper_niqe_table", "scale_factors"} <= set(names)
    for name in names:
        assert (ROOT / "experiments" / name / "README.md").is_file()

    cfg = compose_cfg("experiment=ablation_loss_optimizer", hydra=True)
    assert cfg.data.num == 8 and list(cfg.data.factors) == [8] and cfg.solver.steps == 100
    grid = {key: sweep_values(key, spec) for key, spec in cfg.hydra.sweeper.params.items()}
    assert len(grid["loss"]) * len(grid["optimizer"]) == 12
    for value in grid["loss"] + grid["optimizer"]:
        check_builds(compose_cfg("experiment=ablation_loss_optimizer", value))

    cfg = compose_cfg("experiment=scale_factors")
    assert list(cfg.data.factors) == [4, 8, 16, 32]
    cfg = compose_cfg("experiment=paper_niqe_table", "data.path=/data/celeba_hq")
    assert cfg.generator._target_.endswith("StyleGANGenerator.pretrained") and cfg.data.factor == 64
    assert cfg.solver.eps == 1e-3 and cfg.loss.eps == 1e-3 and cfg.trainer.accelerator == "gpu"


def test_experiment_root_keys_win_over_the_root_defaults():
    assert compose_cfg("experiment=ablation_loss_optimizer").task_name == "ablation_loss_optimizer"


def test_committed_ablation_table_is_the_generated_one():
    text = (ROOT / "experiments" / "ablation_loss_optimizer" / "table.md").read_text()
    assert text.startswith("<!-- generated by: python scripts/make_table.py multirun/ablation_loss_optimizer/")
    body = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| :")]
    assert body[0].startswith("| loss | optimizer | runs | n | success |")
    assert len(body) == 1 + 12 and all(" | 3 | 24 | " in line for line in body[1:])  # 3 seeds x 8 faces per cell


def test_ddp_inside_a_multirun_is_refused_unless_slurm_gave_one_task_per_device():
    from run import check_multirun_strategy

    ddp = {"accelerator": "gpu", "devices": -1, "strategy": "ddp"}
    with pytest.raises(ValueError, match="re-run the whole sweep"):
        check_multirun_strategy(ddp, multirun=True, environ={})
    check_multirun_strategy(ddp, multirun=False, environ={})  # a single DDP run is fine
    check_multirun_strategy(ddp, multirun=True, environ={"SLURM_NTASKS": "4"})
    check_multirun_strategy({"strategy": "auto"}, multirun=True, environ={})

"""Leaderboard, plots and the regression gate on records of real tiny-model runs."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from ci_gate import check_quick_run
from reports_helpers import FAST_NEST, call_main, record_path, records_by_method, tiny_run_args, write_tiny_inputs

from nestbench.check import Bounds, CheckInputError, protocol_differences
from nestbench.leaderboard import Filters, build_leaderboard, leaderboard_from_dir, render
from nestbench.plots import marker_areas, method_colours, neurons_per_layer, point_labels

# A large learning rate makes the tiny model's ARC-Easy accuracy on 20 items move (0.30 -> 0.25),
# so the utility-drop bound has a real drop to test.
STRONG_NEST = [*FAST_NEST, "--set", "lr=5.0"]
SHOW_ALL = ["--include-quick", "--include-limited", "--include-dirty"]
SHOW_ALL_FILTERS = Filters(include_quick=True, include_limited=True, include_dirty=True)


def _with_limit(args: list[str], limit: int) -> list[str]:
    args = list(args)
    args[args.index("--limit") + 1] = str(limit)
    return args


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Real runs: none and NeST, then a failed NeST run in the same folder; a none run under another protocol."""
    folder = tmp_path_factory.mktemp("reports")
    model_dir, files = write_tiny_inputs(folder)
    results = folder / "results"
    code, _, err = call_main(_with_limit(tiny_run_args(model_dir, files, results, *STRONG_NEST), 20))
    assert code == 0, err
    code, _, err = call_main(_with_limit(tiny_run_args(model_dir, files, results, "--set", "z_threshold=1000"), 20))
    assert code == 2, err
    other = folder / "other"
    args = _with_limit(tiny_run_args(model_dir, files, other, "--method", "none", "--over-refusal", "none"), 20)
    args[args.index("--max-new-tokens") + 1] = "5"
    code, _, err = call_main(args)
    assert code == 0, err
    return {"results": results, "other": other, "model": model_dir}


@pytest.fixture(scope="module")
def records(runs) -> dict[str, dict]:
    found = records_by_method(runs["results"])
    nest = [r for r in found["nest"] if r["status"] == "success"]
    failed = [r for r in found["nest"] if r["status"] == "failed"]
    assert len(found["none"]) == 1
    assert len(nest) == 1
    assert len(failed) == 1
    other = records_by_method(runs["other"])["none"][0]
    return {"none": found["none"][0], "nest": nest[0], "failed": failed[0], "other": other}


# Leaderboard


def test_default_excludes_quick_limited_failed(runs):
    code, out, err = call_main(["leaderboard", str(runs["results"])])
    assert code == 0, err
    assert "No run records to show." in out
    assert "Excluded 3 run(s)" in out
    assert "3 quick profile (--include-quick shows them)" in out
    assert "3 limited (--limit) (--include-limited shows them)" in out
    assert "1 not successful (--include-failed shows them)" in out


def test_markdown_rows_and_intervals(runs, records):
    code, out, err = call_main(["leaderboard", str(runs["results"]), *SHOW_ALL])
    assert code == 0, err
    table = [line for line in out.splitlines() if line.startswith("|")]
    header = table[0]
    for title in ("ASR gcg ↓", "unsafe rate ↓", "degenerate ↓", "arc_easy acc ↑", "Δ arc_easy acc ↑",
                  "trainable params", "tuning time (s)"):
        assert title in header
    rows = table[2:]
    assert len(rows) == 2
    assert "| none " in rows[0]
    assert "| nest " in rows[1]
    unsafe = records["nest"]["metrics"]["unsafe_rate"]
    half = 100 * (unsafe["ci_high"] - unsafe["ci_low"]) / 2
    assert f"{100 * unsafe['value']:.1f} ± {half:.1f}" in rows[1]
    assert "1 not successful (--include-failed shows them)" in out
    assert "includes LIMITED runs" in out


def test_utility_change_from_none(runs, records):
    board = leaderboard_from_dir(runs["results"], SHOW_ALL_FILTERS)
    nest_row = next(row for row in board.rows if row["method"] == "nest")
    expected = 100 * (records["nest"]["metrics"]["arc_easy/acc"]["value"]
                      - records["none"]["metrics"]["arc_easy/acc"]["value"])
    assert nest_row["cells"]["delta:arc_easy/acc"]["value"] == pytest.approx(expected)
    assert expected < 0
    assert nest_row["baseline_run_id"] == records["none"]["run_id"]
    none_row = next(row for row in board.rows if row["method"] == "none")
    assert none_row["cells"]["delta:arc_easy/acc"] is None


def test_csv_numbers_match_records(runs, records):
    code, out, err = call_main(["leaderboard", str(runs["results"]), *SHOW_ALL, "--format", "csv"])
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["method"] for row in rows] == ["none", "nest"]
    nest = rows[1]
    assert nest["run_id"] == records["nest"]["run_id"]
    assert float(nest["unsafe rate ↓"]) == pytest.approx(100 * records["nest"]["metrics"]["unsafe_rate"]["value"], abs=1e-4)
    assert float(nest["unsafe rate ±"]) > 0
    assert int(nest["trainable params"]) == records["nest"]["trainable_parameters"]
    assert rows[0]["Δ arc_easy acc ↑"] == ""


def test_latex_booktabs(runs):
    code, out, err = call_main(["leaderboard", str(runs["results"]), *SHOW_ALL, "--format", "latex"])
    assert code == 0, err
    columns = len(leaderboard_from_dir(runs["results"], SHOW_ALL_FILTERS).columns)
    for command in ("\\begin{tabular}{ll" + "r" * columns + "}", "\\toprule", "\\midrule", "\\bottomrule", "\\caption{"):
        assert command in out
    assert "arc\\_easy acc $\\uparrow$" in out
    assert "$\\pm$" in out
    assert "±" not in out
    assert "rates and accuracies in \\%" in out


def test_json_structure(runs, records):
    code, out, err = call_main(["leaderboard", str(runs["results"]), *SHOW_ALL, "--format", "json"])
    assert code == 0, err
    payload = json.loads(out)
    directions = {column["key"]: column["direction"] for column in payload["columns"]}
    assert directions["asr[gcg]"] == "lower"
    assert directions["arc_easy/acc"] == "higher"
    assert [row["method"] for row in payload["rows"]] == ["none", "nest"]
    assert payload["excluded"]["failed"]["run_ids"] == [records["failed"]["run_id"]]
    cell = payload["rows"][1]["cells"]["unsafe_rate"]
    assert cell["n"] == records["nest"]["metrics"]["unsafe_rate"]["n"]


def test_include_failed_supersedes_older_run(runs, records):
    board = leaderboard_from_dir(runs["results"], Filters(True, True, True, True))
    nest_row = next(row for row in board.rows if row["method"] == "nest")
    assert nest_row["run_id"] == records["failed"]["run_id"]
    assert board.excluded == {"superseded": [records["nest"]["run_id"]]}
    assert "includes runs that did not succeed" in board.notes


def test_dirty_checkout_excluded(records):
    # The dirty flag comes from git at run time, so a copy with the flag set replaces a run
    # made from an edited checkout.
    dirty = json.loads(json.dumps(records["nest"]))
    dirty["environment"]["git"]["dirty"] = True
    board = build_leaderboard([records["none"], dirty], Filters(include_quick=True, include_limited=True))
    assert "nest" not in [row["method"] for row in board.rows]
    assert dirty["run_id"] in board.excluded["dirty"]
    shown = build_leaderboard([dirty], SHOW_ALL_FILTERS)
    assert [row["method"] for row in shown.rows] == ["nest"]


def test_output_file(runs, tmp_path):
    target = tmp_path / "board.md"
    code, out, err = call_main(["leaderboard", str(runs["results"]), *SHOW_ALL, "-o", str(target)])
    assert code == 0, err
    assert f"wrote {target}" in out
    assert target.read_text().startswith("# nestbench leaderboard")


def test_leaderboard_bad_input_exits_2(tmp_path):
    code, _, err = call_main(["leaderboard", str(tmp_path / "missing")])
    assert code == 2
    assert "results folder not found" in err
    broken = tmp_path / "results" / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / "record.json").write_text("{not json")
    code, _, err = call_main(["leaderboard", str(tmp_path / "results")])
    assert code == 2
    assert "cannot read run record" in err


def test_render_rejects_unknown_format(runs):
    with pytest.raises(Exception, match="unknown leaderboard format 'html'"):
        render(leaderboard_from_dir(runs["results"]), "html")


# Plots


def test_point_labels_merge_same_point():
    def record(method, model="m/tiny"):
        return {"method": method, "model": {"spec": model}}

    placed = [(record("none"), 93.5, 52.3), (record("circuit-breakers"), 93.54, 52.26), (record("nest"), 47.5, 48.8)]
    assert point_labels(placed) == {(93.5, 52.3): "none, circuit-breakers", (47.5, 48.8): "nest"}
    placed.append((record("none", "m/other"), 90.0, 50.0))
    assert point_labels(placed)[(90.0, 50.0)] == "other none"


def test_method_colours_fixed_per_method():
    records = [{"method": name} for name in ("nest", "lora", "none", "nest")]
    assert method_colours(records) == {"none": "C0", "lora": "C1", "nest": "C2"}
    # The same method keeps its colour when another figure has the same set of runs in another order.
    assert method_colours(list(reversed(records))) == method_colours(records)


def test_marker_areas_span_parameter_range():
    areas = marker_areas([0, 63_400, 134_520_000])
    assert areas[0] == 40.0
    assert areas[2] == 400.0
    assert 200.0 < areas[1] < 300.0
    assert marker_areas([5, 5]) == [120.0, 120.0]
    assert marker_areas([]) == []


def test_plot_writes_png_and_svg(runs, tmp_path):
    code, out, err = call_main(["plot", str(runs["results"]), "--out", str(tmp_path), *SHOW_ALL])
    assert code == 0, err
    names = sorted(path.name for path in tmp_path.iterdir())
    assert "asr_by_attack.png" in names
    assert "asr_by_attack.svg" in names
    assert "safety_vs_utility.png" in names
    assert "safety_vs_utility.svg" in names
    assert sum(name.startswith("safety_neurons_") for name in names) == 2
    for path in tmp_path.glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in tmp_path.glob("*.svg"):
        assert "<svg" in path.read_text()[:1000]


def test_svg_is_reproducible(runs, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        assert call_main(["plot", str(runs["results"]), "--out", str(out), "--formats", "svg", *SHOW_ALL])[0] == 0
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name


def test_neurons_per_layer_matches_audit(runs, records):
    audit_path = Path(records["nest"]["artifacts"]["audit"])
    audit = json.loads(audit_path.read_text())
    counts = neurons_per_layer(audit)
    assert set(counts) == {"gate_proj", "up_proj"}
    assert set(counts["gate_proj"]) == {0, 1}
    assert sum(sum(per_layer.values()) for per_layer in counts.values()) == audit["totals"]["safety_neurons"]


def test_plot_nothing_to_draw_exits_2(runs, tmp_path):
    code, _, err = call_main(["plot", str(runs["results"]), "--out", str(tmp_path)])
    assert code == 2
    assert "no run records to plot" in err
    assert "--include-quick" in err


# Regression gate


def _check(record: dict, runs, *args: str) -> tuple[int, str, str]:
    return call_main(["check", str(record_path(record, runs["results"])), *args])


def test_check_passes_with_loose_bounds(runs, records):
    code, out, err = _check(records["nest"], runs, "--max-asr", "1.0", "--max-utility-drop", "0.5")
    assert code == 0, err
    assert f"ok: run {records['nest']['run_id']} meets every bound" in out


def test_check_reports_each_violated_asr(runs, records):
    metrics = records["nest"]["metrics"]
    positive = sorted(name for name in ("unsafe_rate", "asr[gcg]") if metrics[name]["value"] > 0.1)
    assert positive, "the tiny run produced no attack success above 0.1, so this test has nothing to catch"
    code, out, _ = _check(records["nest"], runs, "--max-asr", "0.05", "--tolerance", "0.05")
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == len(positive)
    for name, line in zip(sorted(positive, key=lambda n: (n != "unsafe_rate", n)), lines):
        assert line == f"{name} = {metrics[name]['value']:.4f} exceeds bound 0.1000"


def test_check_utility_drop_against_own_baseline(runs, records):
    drop = records["none"]["metrics"]["arc_easy/acc"]["value"] - records["nest"]["metrics"]["arc_easy/acc"]["value"]
    assert drop > 0
    code, out, _ = _check(records["nest"], runs, "--max-utility-drop", "0.01")
    assert code == 1
    assert out.strip() == f"arc_easy/acc drop = {drop:.4f} exceeds bound 0.0100"
    baseline = str(record_path(records["none"], runs["results"]))
    code, out, err = _check(records["nest"], runs, "--max-utility-drop", str(drop), "--baseline", baseline)
    assert code == 0, out + err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "no bound given"),
        (["--max-asr", "30"], "--max-asr 30.0 is outside [0, 1]"),
    ],
)
def test_check_bad_bounds_exit_2(runs, records, args, fragment):
    code, _, err = _check(records["nest"], runs, *args)
    assert code == 2
    assert fragment in err


def test_check_over_refusal_bound(runs, records):
    value = records["nest"]["metrics"]["over_refusal"]["value"]
    code, out, err = _check(records["nest"], runs, "--max-over-refusal", str(value))
    assert code == 0, out + err
    other = str(record_path(records["other"], runs["other"]))
    code, _, err = call_main(["check", other, "--max-over-refusal", "0.2"])
    assert code == 2
    assert "has no 'over_refusal' metric" in err


def test_check_unusable_records_exit_2(runs, records, tmp_path):
    code, _, err = call_main(["check", str(tmp_path / "nothing.json"), "--max-asr", "0.5"])
    assert code == 2
    assert "run record not found" in err
    code, _, err = _check(records["failed"], runs, "--max-asr", "0.5")
    assert code == 2
    assert "has status 'failed'" in err
    garbled = tmp_path / "record.json"
    garbled.write_text("[1, 2")
    code, _, err = call_main(["check", str(garbled), "--max-asr", "0.5"])
    assert code == 2
    assert "cannot read run record" in err


def test_check_names_differing_protocol_field(runs, records):
    other = str(record_path(records["other"], runs["other"]))
    code, _, err = _check(records["nest"], runs, "--max-utility-drop", "0.5", "--baseline", other)
    assert code == 2
    assert "evaluation.max_gen_toks: 4 != 5" in err


def test_check_needs_a_baseline_for_utility(runs, records, tmp_path):
    lone = tmp_path / "runs" / records["nest"]["run_id"]
    lone.mkdir(parents=True)
    shutil.copy(record_path(records["nest"], runs["results"]), lone / "record.json")
    code, _, err = call_main(["check", str(lone), "--max-utility-drop", "0.1"])
    assert code == 2
    assert "--max-utility-drop needs a baseline" in err


def test_protocol_differences_nested():
    first = {"a": 1, "evaluation": {"judge": "keyword", "attacks": ["dan"]}, "only": 1}
    second = {"a": 1, "evaluation": {"judge": "llama-guard", "attacks": ["dan"]}}
    assert protocol_differences(first, second) == [
        "evaluation.judge: 'keyword' != 'llama-guard'",
        "only (present in only one record)",
    ]


def test_bounds_reject_negative_tolerance():
    with pytest.raises(CheckInputError, match="--tolerance -0.1 is outside"):
        Bounds(max_asr=0.5, tolerance=-0.1)


def test_ci_gate_helper(records):
    assert "meets every bound" in check_quick_run(records["nest"], max_asr=1.0, max_utility_drop=0.5)
    with pytest.raises(AssertionError, match="exited 1"):
        check_quick_run(records["nest"], max_asr=0.0, max_utility_drop=0.5)


# Committed reference leaderboard

REPO = Path(__file__).resolve().parents[1]
REFERENCE_ARGS = ["--include-quick", "--source-label", "results/reference"]
GENERATED_TEXT_KEYS = {"response", "responses", "prompt", "generation", "generations", "completion"}


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in _keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in _keys(item)}
    return set()


def test_committed_leaderboard_is_current():
    reference = REPO / "results" / "reference"
    if not reference.is_dir():
        pytest.skip("results/reference holds no reference records yet")
    code, out, err = call_main(["leaderboard", str(reference), *REFERENCE_ARGS])
    assert code == 0, err
    committed = (REPO / "results" / "leaderboard.md").read_text(encoding="utf-8")
    assert out == committed, "results/leaderboard.md is stale; regenerate it with `make leaderboard`"
    assert "nestbench leaderboard results/reference " + " ".join(REFERENCE_ARGS) in (REPO / "Makefile").read_text()


def test_reference_records_hold_no_generated_text():
    reference = REPO / "results" / "reference"
    if not reference.is_dir():
        pytest.skip("results/reference holds no reference records yet")
    files = sorted(path.relative_to(reference) for path in reference.rglob("*") if path.is_file())
    assert files
    for path in files:
        assert path.name == "record.json", f"results/reference/{path} is not a run record"
        record = json.loads((reference / path).read_text(encoding="utf-8"))
        assert record["status"] == "success"
        assert record["quick"] is True
        assert not _keys(record) & GENERATED_TEXT_KEYS, f"{path} contains generated text"


def test_optional_columns_follow_metrics():
    from nestbench.leaderboard import _columns

    keys = ["asr[gcg]", "asr[dan]", "asr_mean", "unsafe_rate", "over_refusal", "degenerate", "arc_easy/acc"]
    columns = _columns([{"metrics": {key: {} for key in keys}}])
    assert [column.key for column in columns] == [
        "asr[dan]", "asr[gcg]", "asr_mean", "unsafe_rate", "over_refusal", "degenerate",
        "arc_easy/acc", "delta:arc_easy/acc", "trainable_parameters", "tune_seconds",
    ]
    assert [column.key for column in _columns([{"metrics": {"unsafe_rate": {}}}])] == [
        "unsafe_rate", "degenerate", "trainable_parameters", "tune_seconds",
    ]


def test_mixed_protocols_noted(records):
    board = build_leaderboard([records["nest"], records["other"]], SHOW_ALL_FILTERS)
    model = records["nest"]["model"]["spec"]
    assert f"rows of {model} were measured under 2 different protocols" in " ".join(board.notes)
    assert [row["method"] for row in board.rows] == ["none", "nest"]
    # The only none row was measured under another protocol, so no change from it is shown.
    nest_row = board.rows[1]
    assert nest_row["cells"]["delta:arc_easy/acc"] is None
    assert nest_row["baseline_run_id"] is None


def test_pareto_front():
    from nestbench.plots import pareto_front

    points = [(90.0, 52.0), (45.0, 48.0), (50.0, 47.0), (5.0, 43.0), (45.0, 48.0)]
    assert pareto_front(points) == [(5.0, 43.0), (45.0, 48.0), (90.0, 52.0)]

"""The analyst report: figures checked by hand (tests/fixtures/report/README.md), reading, formats."""

from __future__ import annotations

import argparse
import csv
import gzip
import io
from pathlib import Path

import orjson
import pytest

from proxy import report
from proxy.report import build_report
from proxy.report.aggregate import Scope
from proxy.report.read import Seen, lines_containing
from proxy.report.render_flat import COLUMNS

SMALL = Path(__file__).parent / "fixtures" / "report" / "small"
FILE2 = SMALL / "audit-01JD0000000000000000000001-host-a-101-000002.jsonl"


def _row(rows: list[dict], route: str, stage: str, key: object = None) -> dict:
    (found,) = [r for r in rows if (r["route"], r["stage"], r["key"]) == (route, stage, key)]
    return found


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    return parser.parse_args(list(argv))


def _decision(i: int, primary: object, model: object, *, agree: object = "auto", **extra: object) -> dict:
    """A minimal decision record (the fields the report reads)."""
    if agree == "auto":
        agree = None if primary is None or model is None else primary == model
    record = {
        "type": "decision",
        "id": f"D{i:08d}",
        "ts": f"2026-11-20T10:{i // 60 % 60:02d}:{i % 60:02d}.000000Z",
        "route": "r",
        "stage": "shadow",
        "model_version": "v1",
        "served_by": "primary",
        "fallback": None,
        "request": {"id": f"q{i}", "segment": None},
        "primary": {"latency_ms": 10, "decision": primary, "error": None},
        "model": {"latency_ms": 20, "decision": model, "error": None, "skipped": None, "cost": 0},
        "agree": agree,
    }
    record.update(extra)
    return record


def _write(path: Path, records: list[dict], *, gz: bool = False) -> Path:
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# --- the hand-computed fixture --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> dict:
    return build_report([SMALL])


def test_agreement_and_wilson_interval_match_hand_computation(small):
    shadow = _row(small["totals"], "loan", "shadow")
    assert (shadow["requests"], shadow["samples"], shadow["agreed"]) == (8, 6, 4)
    assert shadow["agreement"]["rate"] == pytest.approx(4 / 6, abs=1e-6)
    assert (shadow["agreement"]["low"], shadow["agreement"]["high"]) == pytest.approx((0.29999, 0.90323), abs=1e-5)


def test_kappa_and_confusion_match_hand_computation(small):
    shadow = _row(small["totals"], "loan", "shadow")
    assert shadow["kappa"] == pytest.approx(1 / 3, abs=1e-6)
    confusion = shadow["confusion"]
    assert confusion["labels"] == ["approve", "decline", "review"]
    assert confusion["matrix"] == [[3, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert not confusion["folded"]
    assert _row(small["totals"], "loan", "assisted")["kappa"] == pytest.approx(0.4, abs=1e-6)


def test_null_agree_is_counted_apart_not_as_disagreement(small):
    shadow = _row(small["totals"], "loan", "shadow")
    assert shadow["unpaired"] == 2
    assert shadow["samples"] + shadow["unpaired"] + shadow["excluded"] == shadow["requests"]
    assert shadow["agreed"] == 4  # 6 samples, 2 disagreements: r6 and r7 (agree null) are in neither


def test_stage_rules_exclude_unshown_suggestions_and_unsampled_primaries(small):
    assisted = _row(small["totals"], "loan", "assisted")
    assert (assisted["samples"], assisted["agreed"], assisted["excluded"]) == (3, 2, 1)
    fraud = _row(small["totals"], "fraud", "autonomous")
    assert (fraud["samples"], fraud["excluded"], fraud["unpaired"]) == (1, 1, 1)
    assert fraud["fallback"] == {"budget": 1, "low_confidence": 1}


def test_model_call_counts_skips_and_error_rate(small):
    m = _row(small["totals"], "loan", "shadow")["model"]
    assert (m["attempted"], m["ok"], m["timeout"], m["error"], m["invalid"]) == (7, 6, 1, 0, 0)
    assert m["error_rate"] == pytest.approx(1 / 7, abs=1e-6)
    assert m["skipped"] == {"sampled_out": 1}
    assert _row(small["totals"], "fraud", "autonomous")["model"]["skipped"] == {"rate": 1}


def test_latency_percentiles_and_cost(small):
    shadow = _row(small["totals"], "loan", "shadow")
    model, primary = shadow["latency_ms"]["model"], shadow["latency_ms"]["primary"]
    assert model["count"] == 7  # the skipped call has no latency; the timeout counts as its timeout
    assert (model["p50"], model["p95"], model["p99"]) == pytest.approx((46, 1000, 1000), rel=0.01)
    assert (primary["p50"], primary["p99"]) == pytest.approx((16, 24), rel=0.01)
    assert shadow["cost"] == {"total": pytest.approx(0.006), "per_1k_requests": pytest.approx(0.75)}


def test_outcomes_join_the_latest_decision_wherever_they_appear(small):
    shadow = _row(small["totals"], "loan", "shadow")["outcomes"]
    assert (shadow["matched"], shadow["awaiting"]) == (4, 3)
    assert (shadow["primary"]["n"], shadow["primary"]["correct"]) == (4, 3)
    assert (shadow["model"]["n"], shadow["model"]["correct"]) == (3, 2)  # r6: the model had no decision
    assisted = _row(small["totals"], "loan", "assisted")["outcomes"]
    assert (assisted["matched"], assisted["awaiting"], assisted["primary"]["correct"]) == (2, 2, 2)
    assert small["outcomes"] == {"known": 7, "unmatched": 1}


def test_segments_group_exactly():
    rep = build_report([SMALL], Scope(by="segment"))
    eu, us = _row(rep["groups"], "loan", "shadow", "eu"), _row(rep["groups"], "loan", "shadow", "us")
    assert (eu["requests"], eu["samples"], eu["agreed"]) == (4, 3, 2)
    assert (us["requests"], us["samples"], us["agreed"]) == (4, 3, 2)
    assert _row(rep["groups"], "fraud", "autonomous", None)["requests"] == 3  # segment null is a group
    assert _row(rep["totals"], "loan", "shadow")["samples"] == 6


def test_inputs_count_files_duplicates_and_malformed_lines(small):
    i = small["inputs"]
    assert (i["files"], i["duplicates"], i["malformed"]) == (3, 2, 3)
    assert (i["decisions"], i["transitions"]) == (15, 2)


def test_malformed_lines_are_reported_with_file_and_line():
    seen: list[tuple[str, int, str]] = []
    build_report([SMALL], on_bad=lambda where, reason: seen.append((where.path, where.line, reason)))
    assert [(Path(p).name, n) for p, n, _ in seen] == [(FILE2.name, 4), (FILE2.name, 9), (FILE2.name, 14)]
    assert "without primary" in seen[2][2]


def test_transitions_in_time_order_with_actor_reason_and_evidence(small):
    t = small["transitions"]
    assert [(x["event"], x["actor"]) for x in t] == [("promote", "policy"), ("hold", "admin")]
    assert t[0]["evidence"] == {"samples": 6, "agreement_lower": 0.3}
    assert t[1]["reason"] == "investigating"


@pytest.mark.parametrize(
    ("since", "until", "stages"),
    [
        ("2026-11-21", None, {("loan", "assisted"), ("fraud", "autonomous")}),
        (None, "2026-11-20", {("loan", "shadow")}),  # a date as --until: up to the end of that day
        ("2026-11-21T10:30:00Z", "2026-11-21T10:30:02Z", {("fraud", "autonomous")}),
    ],
)
def test_time_filters(since, until, stages):
    args = _parse(str(SMALL), *(["--since", since] if since else []), *(["--until", until] if until else []))
    rep = build_report([SMALL], report._scope(args))
    assert {(t["route"], t["stage"]) for t in rep["totals"]} == stages


def test_time_filter_bounds_are_half_open():
    rep = build_report(
        [SMALL],
        report._scope(_parse(str(SMALL), "--since", "2026-11-21T10:30:01Z", "--until", "2026-11-21T10:30:02Z")),
    )
    assert rep["totals"][0]["requests"] == 1


def test_route_filter():
    rep = build_report([SMALL], Scope(routes=frozenset({"fraud"})))
    assert {t["route"] for t in rep["totals"]} == {"fraud"}
    assert rep["transitions"] == []


# --- statistics through the whole pipeline ----------------------------------------------------------


def test_81_of_100_agreeing_gives_the_reference_interval(tmp_path):
    records = [_decision(i, "a", "a" if i < 81 else "b") for i in range(100)]
    total = build_report([_write(tmp_path / "a.jsonl", records)])["totals"][0]
    a = total["agreement"]
    assert (a["rate"], round(a["low"], 4), round(a["high"], 4)) == (0.81, 0.7222, 0.8749)


def test_kappa_of_the_textbook_table(tmp_path):
    cells = {("yes", "yes"): 20, ("yes", "no"): 5, ("no", "yes"): 10, ("no", "no"): 15}
    records = [_decision(i, p, m) for i, (p, m) in enumerate(pair for pair, n in cells.items() for _ in range(n))]
    total = build_report([_write(tmp_path / "k.jsonl", records)])["totals"][0]
    assert total["kappa"] == pytest.approx(0.4)


def test_confusion_keeps_top_labels_and_folds_the_rest(tmp_path):
    pairs = [("a", "a")] * 5 + [("b", "b")] * 4 + [("c", "d")] * 2 + [("e", "a")]
    records = [_decision(i, p, m) for i, (p, m) in enumerate(pairs)]
    total = build_report([_write(tmp_path / "c.jsonl", records)], top_labels=2)["totals"][0]
    c = total["confusion"]
    assert c["labels"] == ["a", "b", "(other)"] and c["folded"]
    assert c["matrix"] == [[5, 0, 0], [0, 4, 0], [1, 0, 2]]
    assert sum(map(sum, c["matrix"])) == total["samples"]


def test_json_types_stay_apart_in_labels(tmp_path):
    records = [_decision(0, True, 1, agree=False), _decision(1, 1, 1), _decision(2, "1", "1")]
    c = build_report([_write(tmp_path / "t.jsonl", records)])["totals"][0]["confusion"]
    assert sorted(map(repr, c["labels"])) == ["'1'", "1", "True"]


def test_model_version_and_day_grouping(tmp_path):
    records = [_decision(0, "a", "a", model_version="v1"), _decision(1, "a", "b", model_version="v2")]
    records[1]["ts"] = "2026-11-21T00:00:00.000000Z"
    path = _write(tmp_path / "g.jsonl", records)
    assert [g["key"] for g in build_report([path], Scope(by="model_version"))["groups"]] == ["v1", "v2"]
    assert [g["key"] for g in build_report([path], Scope(by="day"))["groups"]] == ["2026-11-20", "2026-11-21"]


def test_outcome_comparison_follows_the_config_comparator(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "routes:\n  - name: r\n    primary: {url: http://127.0.0.1:9001}\n    model: {url: http://127.0.0.1:9002}\n"
        "    decision: {primary: d, model: d, compare: map, map: {YES: yes, NO: no}}\n"
    )
    truth = {
        "type": "outcome",
        "id": "O1",
        "ts": "2026-11-22T00:00:00Z",
        "request_id": "q0",
        "outcome": "yes",
    }
    records = [_decision(0, "yes", "YES", agree=True), truth]
    path = _write(tmp_path / "m.jsonl", records)
    plain = build_report([path])["totals"][0]
    assert plain["outcomes"]["model"]["correct"] == 0  # JSON equality: "YES" != "yes"
    mapped = build_report([path], judges=report._judges(str(config)))["totals"][0]
    assert (mapped["outcomes"]["model"]["correct"], mapped["outcomes"]["primary"]["correct"]) == (1, 1)
    assert mapped["confusion"]["labels"] == ["yes"]  # model labels translated: the diagonal is agreement


def test_free_form_labels_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr("proxy.report.groups.MAX_LABELS", 3)
    records = [_decision(i, i, i) for i in range(10)]
    c = build_report([_write(tmp_path / "n.jsonl", records)])["totals"][0]["confusion"]
    assert c["truncated"] and c["labels"][-1] == "(other)" and c["matrix"][-1][-1] == 7


# --- reading ----------------------------------------------------------------------------------------


def test_folders_are_read_recursively_in_name_order_with_gzip(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "b.jsonl.gz", [_decision(1, "a", "b")], gz=True)
    _write(tmp_path / "a.jsonl", [_decision(0, "a", "a")])
    (tmp_path / "notes.txt").write_text("not an audit file")
    rep = build_report([tmp_path])
    assert rep["inputs"]["files"] == 2 and rep["totals"][0]["samples"] == 2


def test_multi_member_gzip_is_read_whole(tmp_path):
    data = gzip.compress(orjson.dumps(_decision(0, "a", "a")) + b"\n") + gzip.compress(
        orjson.dumps(_decision(1, "a", "a")) + b"\n"
    )
    (tmp_path / "m.jsonl.gz").write_bytes(data)
    assert build_report([tmp_path])["totals"][0]["samples"] == 2


def test_truncated_gzip_is_reported_not_fatal(tmp_path):
    data = gzip.compress(b"".join(orjson.dumps(_decision(i, "a", "a")) + b"\n" for i in range(50)))
    (tmp_path / "a.jsonl.gz").write_bytes(data[: len(data) // 2])
    _write(tmp_path / "b.jsonl", [_decision(99, "a", "a")])
    problems: list[str] = []
    rep = build_report([tmp_path], on_bad=lambda where, reason: problems.append(f"{where}: {reason}"))
    assert len(problems) == 1 and "a.jsonl.gz" in problems[0] and "cannot read further" in problems[0]
    assert rep["totals"][0]["samples"] >= 1


def test_prefilter_finds_the_same_lines_at_any_chunk_size(tmp_path, monkeypatch):
    lines = [orjson.dumps(_decision(i, "a", "a")) for i in range(30)]
    lines[7] = lines[19] = b'{"type":"outcome","request_id":"q1","outcome":"a"}'
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\n".join(lines))  # no newline at the end
    for chunk in (7, 64, 1000, 1 << 20):
        monkeypatch.setattr("proxy.report.read.CHUNK", chunk)
        assert list(lines_containing([path], b'"outcome"')) == [lines[7], lines[19]]


def test_duplicates_found_by_writer_and_seq_in_any_order():
    seen = Seen()
    offered = [5, 1, 2, 3, 9, 4, 2, 5, 8, 6, 7, 7, 1]
    firsts = [seen.first_time({"writer": "w", "seq": s}) for s in offered]
    assert firsts == [True, True, True, True, True, True, False, False, True, True, True, False, False]
    assert seen._ranges["w"] == ([1], [9])  # one range left: memory does not grow with records
    assert seen.first_time({"id": "x"}) and not seen.first_time({"id": "x"})


# --- command line and formats -----------------------------------------------------------------------


def test_missing_path_is_one_line_and_exit_2(capsys):
    assert report.run(_parse("/nonexistent/audit")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or folder" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "yesterday"], "--since 'yesterday'"),
        (["--since", "2026-11-22", "--until", "2026-11-21"], "is not before"),
        (["--format", "parquet"], "add -o FILE"),
        (["-c", "/nonexistent.yaml"], "nonexistent.yaml"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, argv, message):
    assert report.run(_parse(str(SMALL), *argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_malformed_lines_go_to_stderr_and_the_report_still_runs(capsys):
    assert report.run(_parse(str(SMALL), "--format", "json")) == 0
    out, err = capsys.readouterr()
    assert f"{FILE2}:4: skipped: not JSON" in err
    assert orjson.loads(out)["inputs"]["malformed"] == 3


def test_table_output(tmp_path):
    out = tmp_path / "r.txt"
    assert report.run(_parse(str(SMALL), "--by", "segment", "-o", str(out))) == 0
    text = out.read_text()
    assert "66.7% [30.0\u201390.3]" in text and "Confusion loan / shadow" in text and "investigating" in text
    assert "\x1b[" not in text  # no colour codes in a file


def test_csv_has_one_row_per_group_with_fixed_columns(tmp_path):
    out = tmp_path / "r.csv"
    assert report.run(_parse(str(SMALL), "--by", "segment", "--format", "csv", "-o", str(out))) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == COLUMNS
    assert [(r["route"], r["stage"], r["key"]) for r in rows] == [
        ("fraud", "autonomous", ""),
        ("loan", "shadow", "eu"),
        ("loan", "shadow", "us"),
        ("loan", "assisted", "eu"),
        ("loan", "assisted", "us"),
    ]
    eu = rows[1]
    assert (eu["samples"], eu["agreed"], eu["skipped_sampled_out"], eu["model_timeout"]) == (
        "3",
        "2",
        "1",
        "0",
    )


def test_parquet_round_trips(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "r.parquet"
    assert report.run(_parse(str(SMALL), "--format", "parquet", "-o", str(out))) == 0
    table = pq.read_table(out)
    assert table.column_names == COLUMNS
    rows = {(r["route"], r["stage"]): r for r in table.to_pylist()}
    assert rows["loan", "shadow"]["samples"] == 6
    assert rows["loan", "shadow"]["kappa"] == pytest.approx(1 / 3, abs=1e-6)


def test_json_shape_is_stable(small):
    assert list(small) == [
        "schema",
        "by",
        "filters",
        "inputs",
        "first_ts",
        "last_ts",
        "groups",
        "totals",
        "outcomes",
        "timeline",
        "transitions",
        "limits",
    ]
    assert small["schema"] == "shadow-proxy.report/1"
    bins = small["timeline"]["routes"]["loan"]
    assert sum(b["samples"] for b in bins) == 9 and sum(b["agreed"] for b in bins) == 6

"""``duplex bench serve --flood``: a live client talks while a flooder process hits the server (issue 23,
deliverable 7). Behaviour only: the report's keys and counts, never how fast anything was."""

import json

import pytest
from helpers import LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG, make_engine

from duplex.bench import flood
from duplex.cli import main

SMALL_MODEL = ["--lm", str(LM_SMALL), "--lm-config", str(LM_SMALL_CONFIG), "--mimi", str(MIMI_SMALL),
               "--mimi-config", str(MIMI_SMALL_CONFIG), "--device", "cpu"]


def _check(report, kind, peers):
    assert report["benchmark"] == "flood" and report["kind"] == kind and report["peers"] == peers
    f = report["flood"]
    assert "exception" not in f, f
    assert f["kind"] == kind and f["requests"] > 0 and f["seconds"] > 0 and f["rate"] > 0
    c = report["client"]
    assert "exception" not in c, c
    assert c["frames_sent"] > 0 and c["replies"] > 0 and c["max_gap_ms"] > 0 and c["late_replies"] >= 0
    s = report["server"]
    assert s["ticks"] > 0 and s["late_ticks"] >= 0 and s["sessions_after"] == 0
    table = flood.format_flood_report(report)
    assert table.splitlines()[0].startswith(f"# flood -- {kind} x {peers} peer")
    assert "max gap ms" in table and "req/s" in table
    assert table.splitlines()[-1] == flood.flood_verdict(report)


def test_a_404_flood_is_counted_while_the_live_client_talks():
    _check(flood.flood_server(make_engine(1), kind="404", peers=2, seconds=1.0), "404", 2)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["stats", "upgrade", "churn"])
def test_every_flood_kind_is_counted_while_the_live_client_talks(kind):
    _check(flood.flood_server(make_engine(1), kind=kind, peers=2, seconds=1.0), kind, 2)


@pytest.mark.slow
def test_bench_serve_flood_prints_the_table_and_writes_the_json(tmp_path, capsys):
    out = tmp_path / "flood.json"
    assert main(["bench", "serve", "--flood", "stats", "--flood-peers", "3", "--seconds", "1", *SMALL_MODEL,
                 "--json", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    _check(report, "stats", 3)
    assert report["server"]["slots"] == 1  # the live client's slot
    assert captured.out.splitlines()[-1] == flood.flood_verdict(report)


@pytest.mark.parametrize("args, words", [
    (["--flood-peers", "3"], "--flood-peers needs --flood KIND"),
    (["--flood", "stats", "--fuzz", "10"], "--flood and --fuzz are separate runs"),
    (["--flood", "stats", "--clients", "2"], "leave out --clients"),
    (["--flood", "churn", "--slots", "2"], "--flood churn needs every slot taken"),
    (["--flood", "404", "--url", "ws://127.0.0.1:9", "--slots", "1"], "--url loads a running server"),
    (["--soak", "1", "--flood", "stats"], "--soak, --flood and --fuzz are separate runs"),
    (["--soak", "1", "--seconds", "5"], "leave out --seconds"),
    (["--soak", "1", "--clients", "3", "--slots", "2"], "--slots 2 is fewer than --clients 3"),
])
def test_bench_serve_flood_option_errors(capsys, args, words):
    assert main(["bench", "serve", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_a_bad_flood_kind_is_refused_by_the_library():
    with pytest.raises(ValueError, match="flood kind"):
        flood.flood_server(url="ws://127.0.0.1:9", kind="everything")


def test_the_verdict_holds_a_live_session_to_the_issues_goal():
    client = {"max_gap_ms": 90.0, "lost": 0}
    kept = {"client": client, "server": {"ticks": 250, "late_ticks": 2}}
    assert flood.flood_verdict(kept).startswith("clock kept")
    late = {"client": client, "server": {"ticks": 250, "late_ticks": 38}}
    assert flood.flood_verdict(late).startswith("clock NOT kept: 15.2% late ticks")
    gap = {"client": {**client, "max_gap_ms": 3200.0}, "server": {"ticks": 250, "late_ticks": 0}}
    assert "largest gap 3200 ms" in flood.flood_verdict(gap) and "NOT" in flood.flood_verdict(gap)


def test_a_soak_reports_the_load_and_the_server_process_at_start_and_end(tmp_path, capsys):
    out = tmp_path / "soak.json"
    assert main(["bench", "serve", "--soak", "0.02", "--clients", "2", *SMALL_MODEL, "--json", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    assert report["benchmark"] == "soak" and report["minutes"] == 0.02 and len(report["clients"]) == 2
    assert all(c["replies"] > 0 and "exception" not in c for c in report["clients"])
    assert report["server"]["ticks"] > 0 and report["server"]["sessions_after"] == 0
    process = report["server_process"]
    assert process["start"]["rss_mib"] > 0 and process["end"]["fds"] > 0
    lines = captured.out.splitlines()
    assert lines[0].startswith("# soak -- 2 x 1.2 s") and lines[-2].startswith("server process: RSS ")
    assert lines[-1] == report["verdict"]

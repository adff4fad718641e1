"""The cluster's rules without a cluster: where a new conversation goes (router.order), how many replicas
(autoscale.replicas_for), what /api/stats says for all of them (board.aggregate), and what each engine is given
(app.engine_args)."""

import pytest

from duplex.cluster.autoscale import SessionAutoscaler, replicas_for
from duplex.cluster.board import StatsBoard, aggregate


def order(*args, **kwargs):
    pytest.importorskip("ray.serve")
    from duplex.cluster.router import order as rule

    return rule(*args, **kwargs)


# (name, ongoing requests as Ray's router counts them, started, draining)
REPLICAS = [("old-full", 2, 1.0, False), ("mid-one", 1, 2.0, False), ("new-empty", 0, 3.0, False),
            ("unknown", None, 4.0, False), ("draining", 0, 0.5, True)]


def test_spread_sends_a_conversation_to_the_emptiest_replica_with_a_free_slot():
    assert order(REPLICAS, slots=2, pack=False) == ["new-empty", "unknown", "mid-one", "old-full", "draining"]


def test_pack_fills_the_oldest_replica_first_so_that_the_newest_empty_first():
    assert order(REPLICAS, slots=2, pack=True) == ["mid-one", "new-empty", "unknown", "old-full", "draining"]


def test_never_a_full_replica_while_another_has_a_free_slot_then_the_shortest_queue():
    replicas = [("a", 5, 1.0, False), ("b", 3, 2.0, False), ("c", 4, 3.0, False), ("d", 1, 4.0, False)]
    for pack in (False, True):
        assert order(replicas, slots=2, pack=pack) == ["d", "b", "c", "a"]
    assert order([("a", 0, 1.0, True)], slots=2, pack=False) == ["a"]  # draining is last, not gone
    assert order([], slots=2, pack=False) == []


def test_autoscaling_keeps_spare_slots_free():
    assert [replicas_for(n, slots=2, spare=1) for n in range(6)] == [1, 1, 2, 2, 3, 3]
    assert [replicas_for(n, slots=4, spare=0) for n in (0, 4, 5)] == [1, 1, 2]

    class Context:
        total_num_requests = 7.0

    assert SessionAutoscaler(slots=4, spare=2)(Context()) == (3, {})


def server_stats(sessions, slots=2, p99=30.0):
    return {"model": "m", "quantization": {"weights": "none"}, "lora": {"adapters": []}, "slots": slots,
            "sessions": sessions, "free_slots": slots - sessions, "waiting": 0, "connections": 3, "refused": 1,
            "rate_limited": 0, "over_capacity": 0, "accept_errors": 0, "prompting": 0, "deadline_misses": 2,
            "ticks": 100, "step_ms_p50": 10.0, "step_ms_p99": p99, "totals": {"dropped_in": 1, "underruns": 2},
            "admission": {"joined": 1}, "prompts": {"sessions": 0},
            "per_session": {str(i): {"frames_in": 5} for i in range(sessions)}}


def test_application_stats_add_up_the_replicas():
    stats = aggregate({"b": server_stats(2, p99=50.0), "a": server_stats(1)}, {"a": {"pid": 7}})
    assert stats["replicas"] == 2 and stats["slots"] == 4 and stats["sessions"] == 3 and stats["free_slots"] == 1
    assert stats["refused"] == 2 and stats["deadline_misses"] == 4 and stats["totals"] == {"dropped_in": 2,
                                                                                           "underruns": 4}
    assert stats["step_ms_p99"] == 50.0 and stats["model"] == "m"  # the worst replica's latency
    assert sorted(stats["per_session"]) == ["a/0", "b/0", "b/1"]
    assert stats["per_replica"]["a"]["sessions"] == 1 and stats["per_replica"]["a"]["pid"] == 7
    assert aggregate({})["replicas"] == 0 and aggregate({})["slots"] == 0


def test_the_board_forgets_replicas_that_stopped_saying():
    board = StatsBoard()
    board.put("a", {"stats": 1})
    board.put("b", {"stats": 2})
    board.forget("b")
    assert board.get() == {"a": {"stats": 1}}
    assert board.get(max_age=-1.0) == {}


def test_each_engine_gets_the_serve_options_that_are_not_the_clusters():
    pytest.importorskip("ray.serve")
    from duplex.cli import build_parser
    from duplex.cluster.app import engine_args

    argv = ["serve", "--ray", "--replicas", "3", "--port", "9000", "--token", "t", "--lora", "a.safetensors",
            "--lora", "b.safetensors", "--origins", "https://x", "https://y", "--quantize", "int8", "--max-waiting",
            "2", "--no-cuda-graphs", "--slots", "5"]
    args = build_parser().parse_args(argv)
    out = engine_args(args.serve_parser, args, slots=5, threads=1)
    assert out[:6] == ["--slots", "5", "--drain", "2.0", "--threads", "1"]
    rest = " ".join(out[6:])
    for given in ("--token t", "--lora a.safetensors --lora b.safetensors", "--origins https://x https://y",
                  "--quantize int8", "--max-waiting 2", "--no-cuda-graphs"):
        assert given in rest
    for cluster_only in ("--ray", "--replicas", "--port", "--host"):
        assert cluster_only not in out


def test_rays_own_tools_get_the_same_application_from_the_same_options():
    pytest.importorskip("ray.serve")
    from duplex.cluster.app import application
    from duplex.errors import UsageError

    app = application({"replicas": "3", "slots": "2", "max-waiting": "1", "no_cuda_graphs": "true",
                       "origins": ["https://a", "https://b"], "device": "cpu"})
    deployment = app._bound_deployment
    assert deployment.num_replicas == 3 and deployment.max_ongoing_requests == 2 + 1 + 64
    serve_args = deployment.init_args[0]
    assert "--no-cuda-graphs" in serve_args and serve_args[serve_args.index("--origins") + 2] == "https://b"
    with pytest.raises(UsageError, match="not an option"):
        application({"replica": "2"})
    with pytest.raises(UsageError):
        application({"lm": "/no/such/model.safetensors"})


def test_without_ray_the_command_says_what_to_install(monkeypatch, capsys):
    import sys

    import duplex.cluster
    from duplex.cli import main

    for name in [m for m in sys.modules if m == "ray" or m.startswith(("ray.", "duplex.cluster."))]:
        monkeypatch.delitem(sys.modules, name)  # imported by other tests: imported again here, without Ray
        if name.startswith("duplex.cluster."):
            monkeypatch.delattr(duplex.cluster, name.rsplit(".", 1)[1], raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["serve", "--ray", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "needs Ray Serve" in err and 'pip install -e ".[ray]"' in err and err.count("\n") == 1

"""The benchmark's verdict and its table: every round's figure shown, the targets of issue #18 judged
on the mean of the rounds."""

from __future__ import annotations

SIDES = ("direct", "floor", "wsgi+requests", "flask+urllib3", "flask+requests", "sidecar", "portkey", "litellm")
LARGE = {"chat_400kb": 1.0, "ocr_10mb": 8.0, "embeddings_512x1kb": 8.0}  # added p50 ms at c=1
TARGETS = {"cpu_vs_floor": 1.5, "rps_vs_portkey": 2.5, "rps_vs_litellm": 10.0, "p99_vs_floor_c16": 3.0,
           "added_p50_ms": 0.6, "added_p99_ms": 2.0, "held_over_bodies": 1.5, "stream_wall_vs_direct": 1.1,
           "ttfe_p99_ms": 500.0, "rss_kb_per_stream": 20.0, "relay_events_per_s": 15000.0,
           "idle_rss_mb_per_worker": 90.0, "startup_s": 1.5}


def _rounds(sc: dict, scenario: str, side: str, get) -> list:
    """One figure per round, None where the side did not run or failed."""
    out = []
    for r in sc.get(scenario, {}).get(side, []):
        try:
            out.append(None if "failed" in r else get(r))
        except (KeyError, TypeError, ZeroDivisionError):
            out.append(None)
    return out


def _ratio(a: list, b: list) -> list:
    return [round(x / y, 2) if x is not None and y else None for x, y in zip(a, b, strict=False)]


def check(results: dict) -> dict:
    sc = results["scenarios"]
    out: dict = {}

    def ok(name, values, limit, higher_is_better=False):
        known = [v for v in values if v is not None]
        mean = round(sum(known) / len(known), 3) if known else None
        passed = None if mean is None else (mean >= limit if higher_is_better else mean <= limit)
        out[name] = {"values": values, "mean": mean, "target": limit, "pass": passed}

    for c in (16, 64):
        key = f"throughput_c{c}"
        cpu = {s: _rounds(sc, key, s, lambda r: r["server_cpu_us_per_request"]) for s in ("sidecar", "floor")}
        rps = {s: _rounds(sc, key, s, lambda r: r["rps"]) for s in ("sidecar", "portkey", "litellm")}
        ok(f"cpu_vs_floor_c{c}", _ratio(cpu["sidecar"], cpu["floor"]), TARGETS["cpu_vs_floor"])
        # A peer's rounds run in the opposite order to the sidecar's: compare round by round all the same.
        ok(f"rps_vs_portkey_c{c}", _ratio(rps["sidecar"], rps["portkey"]), TARGETS["rps_vs_portkey"], True)
        ok(f"rps_vs_litellm_c{c}", _ratio(rps["sidecar"], rps["litellm"]), TARGETS["rps_vs_litellm"], True)
    p99 = {s: _rounds(sc, "throughput_c16", s, lambda r: r["latency_ms"]["p99"]) for s in ("sidecar", "floor")}
    ok("p99_vs_floor_c16", _ratio(p99["sidecar"], p99["floor"]), TARGETS["p99_vs_floor_c16"])
    ok("added_p50_ms", _rounds(sc, "added_latency", "sidecar", lambda r: r["added_ms"]["p50"]), TARGETS["added_p50_ms"])
    ok("added_p99_ms", _rounds(sc, "added_latency", "sidecar", lambda r: r["added_ms"]["p99"]), TARGETS["added_p99_ms"])
    for name, limit in LARGE.items():
        ok(f"{name}_added_p50_ms", _rounds(sc, name, "sidecar", lambda r: r["added_ms"]["p50"]), limit)
    ok("held_8x10mb_over_bodies", _rounds(sc, "held_8x10mb", "sidecar", lambda r: r["peak_over_bodies"]),
       TARGETS["held_over_bodies"])
    walls = {s: _rounds(sc, "streams", s, lambda r: r["wall_s"]) for s in ("sidecar", "direct")}
    ok("stream_errors", _rounds(sc, "streams", "sidecar", lambda r: r["errors"]), 0)
    ok("stream_wall_vs_direct", _ratio(walls["sidecar"], walls["direct"]), TARGETS["stream_wall_vs_direct"])
    ok("ttfe_p99_ms", _rounds(sc, "streams", "sidecar", lambda r: r["ttfe_ms"]["p99"]), TARGETS["ttfe_p99_ms"])
    ok("rss_kb_per_stream", _rounds(sc, "streams", "sidecar", lambda r: r["rss_kb_per_stream"]),
       TARGETS["rss_kb_per_stream"])
    ok("relay_events_per_s", _rounds(sc, "relay", "sidecar", lambda r: r["events_per_s"]),
       TARGETS["relay_events_per_s"], True)
    warm = results["idle"].get("sidecar", {}).get("warm", {})
    ok("idle_rss_mb_per_worker", [round(warm["rss_kb_per_worker"] / 1024, 1)] if warm else [],
       TARGETS["idle_rss_mb_per_worker"])
    ok("idle_pss_mb_per_worker", [round(warm["pss_kb_per_worker"] / 1024, 1)] if warm else [],
       TARGETS["idle_rss_mb_per_worker"])
    ok("startup_s", [warm.get("startup_s")], TARGETS["startup_s"])
    if "soak" in sc:
        ok("soak_growth_kb", [sc["soak"]["growth_second_half_kb"]], 10_000)
    return out


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict) -> str:
    sc = results["scenarios"]
    names = [n for n in SIDES if any(n in row for row in sc.values() if isinstance(row, dict))]
    lines = ["Each cell: round 1 / round 2 (the second round runs the sides in reverse order).", "",
             "| scenario | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label, scenario, get, spec):
        cells = []
        for n in names:
            values = _rounds(sc, scenario, n, get)
            cells.append(" / ".join(_fmt(v, spec) for v in values) if values else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def load(scenario):
        row(f"{scenario}: load average 1 min, start→end", scenario,
            lambda r: f"{r['loadavg'][0]:.1f}→{r['loadavg'][1]:.1f}", "")

    for c in (16, 64):
        key = f"throughput_c{c}"
        row(f"chat req/s, c={c}", key, lambda r: r["rps"], ",.0f")
        row(f"server CPU µs per request, c={c}", key, lambda r: r["server_cpu_us_per_request"], "d")
        row(f"chat p50 ms, c={c}", key, lambda r: r["latency_ms"]["p50"], ".2f")
        row(f"chat p99 ms, c={c}", key, lambda r: r["latency_ms"]["p99"], ".2f")
        load(key)
    row("added latency p50 ms, c=1", "added_latency", lambda r: r["added_ms"]["p50"], ".3f")
    row("added latency p99 ms, c=1", "added_latency", lambda r: r["added_ms"]["p99"], ".3f")
    row("server CPU µs per request, c=1", "added_latency", lambda r: r["server_cpu_us_per_request"], "d")
    load("added_latency")
    for name in LARGE:
        row(f"{name}: added p50 ms, c=1", name, lambda r: r["added_ms"]["p50"], ".2f")
        row(f"{name}: added p99 ms, c=1", name, lambda r: r["added_ms"]["p99"], ".2f")
        row(f"{name}: server CPU µs per request", name, lambda r: r["server_cpu_us_per_request"], "d")
        load(name)
    row("8 × 10 MB OCR at once: worker peak RSS / bodies", "held_8x10mb", lambda r: r["peak_over_bodies"], ".2f")
    load("held_8x10mb")
    row("1000 streams: wall s", "streams", lambda r: r["wall_s"], ".2f")
    row("1000 streams: errors", "streams", lambda r: r["errors"], "d")
    row("1000 streams: first event p99 ms", "streams", lambda r: r["ttfe_ms"]["p99"], ".0f")
    row("1000 streams: worker RSS KB per stream", "streams", lambda r: r["rss_kb_per_stream"], ".1f")
    load("streams")
    row("relay events/s", "relay", lambda r: r["events_per_s"], ",.0f")
    load("relay")
    idle = results.get("idle", {})
    for label, key, scale, spec in (("idle RSS MB per worker (after warm-up)", "rss_kb_per_worker", 1024, ".1f"),
                                    ("idle PSS MB per worker (shared pages split)", "pss_kb_per_worker", 1024, ".1f"),
                                    ("idle USS MB per worker (private pages)", "uss_kb_per_worker", 1024, ".1f"),
                                    ("idle PSS MB, all processes", "pss_kb_all", 1024, ".1f"),
                                    ("start-up to ready, wall s", "startup_s", 1, ".2f"),
                                    ("start-up CPU s, all processes", "startup_cpu_s", 1, ".2f")):
        lines.append(f"| {label} | " + " | ".join(
            _fmt(idle[n]["warm"].get(key) / scale if idle[n]["warm"].get(key) is not None else None, spec)
            if n in idle else "-" for n in names) + " |")
    lines += ["", "| target | rounds | mean | goal | pass |", "|---|---|---|---|---|"]
    for name, t in results["targets"].items():
        mark = {True: "yes", False: "NO", None: "n/a"}[t["pass"]]
        values = " / ".join(_fmt(v, "") for v in t["values"])
        lines.append(f"| {name} | {values} | {t['mean']} | {t['target']} | {mark} |")
    return "\n".join(lines)

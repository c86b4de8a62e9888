#!/usr/bin/env python3
"""Prints the comparison table of scripts/bench-compare from the JSON files
mail-bench wrote (results/<side>-<phase>.json). Formatting only: every
figure was measured by mail-bench (or imaptest, run under mail-bench)."""
import json
import os
import re
import statistics
import sys

RES = sys.argv[1]


def load(side, phase):
    path = os.path.join(RES, f"{side}-{phase}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def per_run(doc, fn):
    return med([fn(r) for r in doc["results"]]) if doc else None


def cpu_total(r):
    # The servers and PostgreSQL; the per-service groups are parts of
    # "server" and are not added again.
    return sum(g["cpu_ms"] for k, g in r["procs"].items() if k in ("server", "postgres"))


def imaptest_commands(side, clients):
    path = os.path.join(RES, f"{side}-imaptest{clients}.txt")
    if not os.path.exists(path):
        return None
    lines = open(path).read().splitlines()
    try:
        i = lines.index("Totals:")
    except ValueError:
        return None
    # header, probabilities, repeat probabilities, then the counts
    counts = [line for line in lines[i + 1 :] if line.strip()]
    return sum(int(x) for x in re.findall(r"\d+", counts[-1])) if counts else None


def row_values(side):
    v = {}
    for s in (10, 50):
        d = load(side, f"smtp{s}")
        v[f"smtp{s}"] = d and d["rate"]["median"]
        v[f"into{s}"] = per_run(d, lambda r: r["into_mailbox_per_sec"])
        v[f"lag{s}"] = per_run(d, lambda r: r["delivery_lag_secs"])
        v[f"p50_{s}"] = per_run(d, lambda r: r["data_250_p50_ms"])
        v[f"p99_{s}"] = per_run(d, lambda r: r["data_250_p99_ms"])
        v[f"smtpcpu{s}"] = per_run(d, lambda r: cpu_total(r) / max(r["accepted"], 1))
        d = load(side, f"imap{s}")
        v[f"imap{s}"] = d and d["rate"]["median"]
        v[f"imapcpu{s}"] = per_run(d, lambda r: cpu_total(r) / max(r["commands"], 1))
        v[f"imappss{s}"] = per_run(d, lambda r: r["procs"]["server"]["pss_peak_mib"])
        v[f"imapafter{s}"] = per_run(d, lambda r: r["procs"]["server"]["pss_after_mib"])
        v[f"imapbefore{s}"] = per_run(d, lambda r: r["procs"]["server"]["pss_before_mib"])
        v[f"imappg{s}"] = per_run(
            d, lambda r: r["procs"].get("postgres", {}).get("pss_peak_mib")
        )
        d = load(side, f"imaptest{s}")
        n = imaptest_commands(side, s)
        if d and n is not None:
            r = d["results"][0]
            v[f"it{s}"] = n / r["secs"]
            v[f"itcpu{s}"] = cpu_total(r) / max(n, 1)
            v[f"itpss{s}"] = r["procs"]["server"]["pss_peak_mib"]
    d = load(side, "latency")
    if d:
        r = d["results"][0]
        v["lat50"], v["lat99"] = r["p50_ms"], r["p99_ms"]
    d = load(side, "idle")
    if d:
        r = d["results"][0]
        held = r["held"]["server"]
        v["idle_n"] = r["opened"]
        v["idle_held"] = held["pss_held_mib"]
        v["idle_per"] = held["bytes_per_connection"] / 1024
    d = load(side, "pop3")
    v["pop3"] = d and d["rate"]["median"]
    v["pop3cpu"] = per_run(d, lambda r: cpu_total(r) / max(r["messages"], 1))
    v["pop3pss"] = per_run(d, lambda r: r["procs"]["server"]["pss_peak_mib"])
    v["pop3pg"] = per_run(d, lambda r: r["procs"].get("postgres", {}).get("pss_peak_mib"))
    return v


ref = row_values("reference")
epi = row_values("epistole")


def fmt(x, digits):
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


ROWS = [
    ("SMTP accepted msg/s, 10 sessions", "smtp10", 0),
    ("SMTP accepted msg/s, 50 sessions", "smtp50", 0),
    ("SMTP into mailbox msg/s, 10 sessions", "into10", 0),
    ("SMTP into mailbox msg/s, 50 sessions", "into50", 0),
    ("delivery lag after the last 250, s (10 / lower is better)", "lag10", 2),
    ("delivery lag after the last 250, s (50 / lower is better)", "lag50", 2),
    ("DATA→250 p50 ms, 10 sessions (lower is better)", "p50_10", 2),
    ("DATA→250 p99 ms, 10 sessions (lower is better)", "p99_10", 2),
    ("server CPU ms per message, SMTP 10 (lower is better)", "smtpcpu10", 2),
    ("server CPU ms per message, SMTP 50 (lower is better)", "smtpcpu50", 2),
    ("IMAP mix (mail-bench) cmd/s, 10 clients", "imap10", 0),
    ("IMAP mix (mail-bench) cmd/s, 50 clients", "imap50", 0),
    ("server CPU ms per IMAP command, 10 (lower is better)", "imapcpu10", 2),
    ("server CPU ms per IMAP command, 50 (lower is better)", "imapcpu50", 2),
    ("imaptest default mix cmd/s, 10 clients", "it10", 0),
    ("imaptest default mix cmd/s, 50 clients", "it50", 0),
    ("server CPU ms per imaptest command, 10 (lower is better)", "itcpu10", 2),
    ("server CPU ms per imaptest command, 50 (lower is better)", "itcpu50", 2),
    ("accept → IDLE EXISTS p50 ms, from the 250 (lower is better)", "lat50", 1),
    ("accept → IDLE EXISTS p99 ms, from the 250 (lower is better)", "lat99", 1),
    ("idle IMAP connections held (Epistole 10,000; Dovecot see note)", "idle_n", 0),
    ("PSS MiB with them held, servers without PostgreSQL", "idle_held", 1),
    ("KiB per idle connection (PSS held − before) / N (lower is better)", "idle_per", 1),
    ("POP3 RETR msg/s, 10 clients", "pop3", 0),
    ("server CPU ms per POP3 message (lower is better)", "pop3cpu", 2),
    ("peak PSS MiB, IMAP mix 50, servers without PostgreSQL (lower is better)", "imappss50", 1),
    ("PSS MiB after IMAP mix 50 (idle before: see next row)", "imapafter50", 1),
    ("PSS MiB before the IMAP mix 50", "imapbefore50", 1),
    ("peak PSS MiB, imaptest 50 (lower is better)", "itpss50", 1),
    ("peak PSS MiB, POP3 (lower is better)", "pop3pss", 1),
    ("PostgreSQL peak PSS MiB, IMAP mix 50 / POP3 (Epistole only)", None, 1),
]

print("| measure | Postfix+Dovecot | Epistole | Epistole/ref |")
print("|---|---|---|---|")
for label, key, digits in ROWS:
    if key is None:
        e = f"{fmt(epi.get('imappg50'), 1)} / {fmt(epi.get('pop3pg'), 1)}"
        print(f"| {label} | — | {e} | — |")
        continue
    r, e = ref.get(key), epi.get(key)
    ratio = f"{e / r:.2f}×" if r and e is not None else "—"
    print(f"| {label} | {fmt(r, digits)} | {fmt(e, digits)} | {ratio} |")


# Each Epistole service apart (the --proc groups named after them):
# PSS before the phase and its peak, and CPU used, per phase.
SERVICES = ["smtp-in", "smtp-out", "delivery", "imap", "pop3", "mailbox-store", "postgres"]
PHASES = ["smtp10", "smtp50", "latency", "pop3", "imap10", "imap50", "imaptest10", "imaptest50", "idle"]
docs = {ph: load("epistole", ph) for ph in PHASES}
if any(d and any(s in d["results"][0]["procs"] for s in SERVICES[:-1]) for d in docs.values()):
    print()
    print("Epistole per service: PSS MiB idle (lowest before any phase) / peak (any phase), CPU % of one core (busiest phase)")
    print()
    print("| service | PSS idle MiB | PSS peak MiB | CPU % peak (phase) |")
    print("|---|---|---|---|")
    for svc in SERVICES:
        idle, peak, cpu, cpu_ph = None, None, None, ""
        for ph, d in docs.items():
            if not d:
                continue
            for r in d["results"]:
                g = r["procs"].get(svc)
                if not g:
                    continue
                secs = r.get("phase_secs")
                idle = g["pss_before_mib"] if idle is None else min(idle, g["pss_before_mib"])
                peak = g["pss_peak_mib"] if peak is None else max(peak, g["pss_peak_mib"])
                if secs:
                    pct = g["cpu_ms"] / 10 / secs
                    if cpu is None or pct > cpu:
                        cpu, cpu_ph = pct, ph
        if idle is not None:
            print(f"| {svc} | {idle:.1f} | {peak:.1f} | {cpu or 0:.0f} ({cpu_ph}) |")

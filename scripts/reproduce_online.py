#!/usr/bin/env python
"""Online distillation under one budget: independent, DML, CL, ONE and OKDDip over N seeds → mean ± std table.

Every run is a real `kd distill-online` command (printed, and written into the table's notes), so
each number can be reproduced alone. Accuracies are the last epoch's, on the test split — never a
best epoch. A finished run directory is reused, so an interrupted reproduction continues where it
stopped. The table goes into docs/results.md between `<!-- online:TAG:start -->` and
`<!-- online:TAG:end -->` inside the online section (created if absent); the rest of the file is kept.

    python scripts/reproduce_online.py --dataset fashion-mnist --model lenet5 --split-at stage3 \\
        --seeds 0,1,2 --epochs 5 --device cpu --tag fashion-mnist-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("independent", "dml", "cl", "one", "okddip")
SECTION = ("<!-- online:start -->", "<!-- online:end -->")
BRANCHED = ("cl", "one", "okddip")


def command(args: argparse.Namespace, method: str, seed: int, out: Path) -> list[str]:
    cmd = ["kd", "distill-online", "--method", method, "--dataset", args.dataset, "--model", args.model,
           "--epochs", str(args.epochs), "--seed", str(seed), "--device", args.device, "--out", str(out)]
    if method in BRANCHED and args.split_at:
        cmd += ["--split-at", args.split_at]
    if args.preset:
        cmd += ["--preset", args.preset]
    cmd += shlex.split(args.extra)
    if method in ("dml", "independent") and args.peers:
        cmd += ["--peers", str(args.peers)]
    if method == "dml" and args.update:
        cmd += ["--update", args.update]
    return cmd


def run_one(cmd: list[str], out: Path) -> dict:
    run_json = out / "run.json"
    if run_json.is_file():
        info = json.loads(run_json.read_text())
        if info.get("status") == "complete":
            return info
    full = [sys.executable, "-m", "kdcli", *cmd[1:], "--quiet", "--json", "--overwrite"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    done = subprocess.run(full, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr.strip()[-2000:]}")
    print(f"  done in {time.time() - t0:.0f}s", flush=True)
    return json.loads(run_json.read_text())


def summarise(info: dict) -> dict[str, float]:
    """Per run: the mean over peers/branches, the best member, the ensemble, the leader (OKDDip)."""
    test = {role: scores["top1"] * 100 for role, scores in info["metrics"]["test"].items()}
    members = [v for role, v in test.items() if role.startswith(("peer", "branch"))]
    row = {"peer mean": statistics.fmean(members), "ensemble": test.get("ensemble", float("nan"))}
    if "leader" in test:
        row["leader"] = test["leader"]
    row["wall s"] = info["wall_time_s"]
    optim, train_cfg = info["config"]["optim"], info["config"]["train"]
    row["schedule"] = (
        f"{optim['optimizer'].upper()} lr {optim['lr']:g}, {optim['schedule']}"
        + (f" after {optim['warmup_epochs']:g} warm-up epoch(s)" if optim["warmup_epochs"] else "")
        + f", batch {train_cfg['batch_size']}, on {info.get('device_name') or info['device']}"
    )
    row["params"] = next(r["params"] for role, r in info["roles"].items() if role.startswith(("peer", "branch")))
    return row


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(results: dict[str, list[dict]], args: argparse.Namespace, commands: dict[str, list[str]]) -> str:
    seeds = args.seeds
    lines = [
        f"**{args.dataset}, {args.model}, {args.epochs} epochs, seeds {seeds}, device {args.device}** "
        f"(top-1 % on the test split at the last epoch, mean ± std over {len(seeds.split(','))} seeds; "
        f"{next(iter(results.values()))[0]['schedule']})",
        "",
        "| method | peer/branch mean | ensemble | leader | params of one peer | wall s / run |",
        "|---|---|---|---|---|---|",
    ]
    for method, rows in results.items():
        leader = [r["leader"] for r in rows if "leader" in r]
        lines.append(
            f"| {method} | {mean_std([r['peer mean'] for r in rows])} | {mean_std([r['ensemble'] for r in rows])} | "
            f"{mean_std(leader)} | {rows[0]['params']:,} | {statistics.fmean(r['wall s'] for r in rows):.0f} |"
        )
    lines += ["", "Commands (seed 0; the other seeds change `--seed` and `--out`):", "", "```"]
    lines += [" ".join(cmd) for cmd in commands.values()]
    lines += ["```", f"Made by `python scripts/reproduce_online.py {' '.join(sys.argv[1:])}`."]
    return "\n".join(lines)


def write_section(doc: Path, tag: str, body: str) -> None:
    """Replace (or add) the tagged block inside the online section of ``doc``; leave the rest alone."""
    start, end = f"<!-- online:{tag}:start -->", f"<!-- online:{tag}:end -->"
    block = f"{start}\n{body}\n{end}"
    text = doc.read_text() if doc.exists() else "# Results\n"
    if SECTION[0] not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION[0]}\n## Online distillation\n\n{SECTION[1]}\n"
    head, rest = text.split(SECTION[0], 1)
    section, tail = rest.split(SECTION[1], 1)
    if start in section:
        before, after = section.split(start, 1)
        section = before + block + after.split(end, 1)[1]
    else:
        section = section.rstrip("\n") + f"\n\n{block}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(head + SECTION[0] + section + SECTION[1] + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--split-at", default="", help="first per-branch stage for cl/one/okddip (default: the last)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--peers", type=int, default=None, help="peers of dml/independent (default 2)")
    parser.add_argument("--update", default="", help="dml's --update (default: kd's default, simultaneous)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="", help="quick | paper (default: the command's quick preset)")
    parser.add_argument("--extra", default="", help="more kd flags for every run, e.g. '--lr 0.05 --batch-size 128'")
    parser.add_argument("--runs", default="runs/online", help="where run directories go")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--tag", default=None, help="name of the table's block in the doc (default DATASET-MODEL)")
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    results: dict[str, list[dict]] = {}
    commands: dict[str, list[str]] = {}
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            out = Path(args.runs) / f"{args.dataset.replace(':', '_').replace('/', '_')}-{args.model}-{method}-s{seed}"
            cmd = command(args, method, seed, out)
            commands.setdefault(method, cmd)
            results.setdefault(method, []).append(summarise(run_one(cmd, out.resolve() if out.is_absolute() else ROOT / out)))
    body = table(results, args, commands)
    print(body)
    if not args.no_doc:
        write_section(Path(args.doc), args.tag or f"{args.dataset}-{args.model}", body)
        print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()

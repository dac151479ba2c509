#!/usr/bin/env python
"""Data-free distillation under one protocol: teacher → every data-free method (+ the noise baseline,
+ `kd distill` with the real data as the upper reference) over N seeds → one mean ± std table.

Every number is a real `kd` command (printed, and listed under the table), so each can be rerun
alone. Accuracies are the last epoch's on the test split, never a best epoch. A finished run
directory is reused, so an interrupted reproduction continues where it stopped. DeepInversion needs
a teacher with BatchNorm, so it gets its own BN teacher (``--bn-teacher-model``) and its own noise
and KD rows. The table goes into docs/results.md between ``<!-- datafree:TAG:start -->`` and
``<!-- datafree:TAG:end -->`` inside the data-free section; the rest of the file is kept.

    KD_DATA_DIR=/work/shared/data python scripts/reproduce_datafree.py --dataset mnist --device cpu \\
        --seeds 0 --tag mnist-cpu-quick

Issue 11 additions: ``--teacher-preset paper`` trains the teacher with ``kd train-teacher --preset
paper`` (the data-free papers' recipe: Adam, all images, 32 px MNIST); ``--row 'LABEL=METHOD FLAGS'``
adds a row for one method with extra flags (before/after a fix at the same budget, e.g.
``--row 'lopes, full statistics=lopes --param statistics=full'``); ``--shots 1,10,100`` adds few-shot
rows (``kd distill --shots M``: M real images per class) and ``--shots-attention`` their KD+AT twins;
``--jobs N`` runs N at a time (on a CPU, with ``--threads 1`` in ``--common-extra``).

``--bench`` instead measures synthesis speed (`kd synthesize`: ZSKD and DeepInversion impressions
per second, DAFL generator samples per second) into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("noise", "dafl", "zskt", "zskd", "lopes", "deepinversion", "kd")
SECTION = ("<!-- datafree:start -->", "<!-- datafree:end -->")
ANCHORS = {  # published MNIST LeNet-5 → LeNet-5-half numbers (PAPERS.md)
    ("mnist", "dafl"): "98.20",
    ("mnist", "zskd"): "98.77",
    ("mnist", "lopes"): "92.47",
    ("mnist", "kd"): "98.91 (DAFL's KD row)",
}


def kd_cmd(*args: str) -> list[str]:
    return ["kd", *args]


def rel(path: Path) -> str:
    """A path as the printed commands name it: relative to the repository root they run from, if inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run_one(cmd: list[str], out: Path) -> tuple[dict, float]:
    """Run a kd command (unless its run directory is already complete); returns (run.json, wall seconds)."""
    run_json = out / "run.json"
    if run_json.is_file():
        info = json.loads(run_json.read_text())
        if info.get("status") == "complete":
            return info, float(info.get("reproduce_wall_s", info.get("wall_time_s", 0.0)))
    full = [sys.executable, "-m", "kdcli", *cmd[1:], "--quiet", "--json", "--overwrite"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    done = subprocess.run(full, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr.strip()[-2000:]}")
    info = json.loads(run_json.read_text())
    info["reproduce_wall_s"] = round(wall, 1)
    run_json.write_text(json.dumps(info, indent=2) + "\n")
    scores = info["metrics"]["test"]
    top1 = scores.get("student", scores.get("teacher", {})).get("top1", 0.0)
    print(
        f"  {top1 * 100:.2f}% in {wall:.0f}s",
        flush=True,
    )
    return info, wall


def teacher_cmd(args: argparse.Namespace, model: str, out: Path) -> list[str]:
    if args.teacher_preset and model == args.teacher_model:
        return kd_cmd("train-teacher", "--dataset", args.dataset, "--model", model, "--preset", args.teacher_preset,
                      "--seed", "0", "--device", args.device, "--out", rel(out), *shlex.split(args.teacher_extra))
    epochs = (
        args.bn_teacher_epochs if model == args.bn_teacher_model and args.bn_teacher_epochs else args.teacher_epochs
    )
    return kd_cmd(
        "train-teacher",
        "--dataset",
        args.dataset,
        "--model",
        model,
        "--epochs",
        str(epochs),
        "--lr",
        str(args.teacher_lr),
        "--batch-size",
        "128",
        "--seed",
        "0",
        "--device",
        args.device,
        "--out",
        rel(out),
        *shlex.split(args.teacher_extra),
    )


def method_cmd(args: argparse.Namespace, method: str, teacher: Path, seed: int, out: Path,
               row_extra: str = "") -> list[str]:
    common = ["--seed", str(seed), "--device", args.device, "--out", rel(out), *shlex.split(args.common_extra)]
    if method == "kd":
        return kd_cmd(
            "distill",
            "--teacher",
            rel(teacher),
            "--model",
            args.student,
            "--epochs",
            str(args.kd_epochs),
            *common,
            *shlex.split(args.kd_extra),
            *shlex.split(row_extra),
        )
    extra = shlex.split(getattr(args, f"{method}_extra") or "") + shlex.split(row_extra)
    return kd_cmd(
        "distill-datafree",
        "--teacher",
        rel(teacher),
        "--method",
        method,
        "--student",
        args.student,
        "--preset",
        args.preset,
        *common,
        *extra,
    )


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.mean(values) * 100
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values) * 100:.2f}"


def out_dir(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    return out if out.is_absolute() else ROOT / out


def planned_rows(args: argparse.Namespace, methods: list[str]) -> list[tuple[str, str, str, str]]:
    """(label, group, method, extra flags) of every row, in table order."""
    rows = [(m + (" (with data)" if m == "kd" else ""), "plain", m, "") for m in methods if m != "deepinversion"]
    for spec in args.row:
        label, sep, rest = spec.partition("=")
        if not sep or not rest.split():
            raise SystemExit(f"--row {spec!r}: expected 'LABEL=METHOD FLAGS'")
        method, _, extra = rest.strip().partition(" ")
        rows.append((label.strip(), "plain", method, extra.strip()))
    for shots in [int(m) for m in args.shots.split(",") if m.strip()]:
        rows.append((f"kd, {shots} real image{'s' if shots > 1 else ''}/class", "plain", "kd",
                     f"--shots {shots} {args.shots_extra}".strip()))
        if args.shots_attention:
            rows.append((f"kd+at, {shots} real image{'s' if shots > 1 else ''}/class", "plain", "kd",
                         f"--shots {shots} --attention {args.shots_extra}".strip()))
    if "deepinversion" in methods:
        rows += [(m + (" (with data)" if m == "kd" else ""), "bn", m, "") for m in args.bn_methods.split(",") if m]
    return rows


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")


def reproduce(args: argparse.Namespace) -> str:
    out = out_dir(args)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m for m in args.methods.split(",") if m]
    teachers = {"plain": out / f"teacher-{args.teacher_model}"}
    teacher_infos = {}
    commands: list[str] = []
    cmd = teacher_cmd(args, args.teacher_model, teachers["plain"])
    teacher_infos["plain"], _ = run_one(cmd, teachers["plain"])
    commands.append(" ".join(cmd))
    if "deepinversion" in methods:
        teachers["bn"] = out / f"teacher-{args.bn_teacher_model}"
        cmd = teacher_cmd(args, args.bn_teacher_model, teachers["bn"])
        teacher_infos["bn"], _ = run_one(cmd, teachers["bn"])
        commands.append(" ".join(cmd))
    if args.record_metadata:  # e.g. Lopes' full statistics, which kd train-teacher does not record
        cmd = kd_cmd("record-metadata", "--teacher", rel(teachers["plain"]), "--statistics", args.record_metadata,
                     "--device", args.device)
        if not (teachers["plain"] / f"metadata-{args.record_metadata}.safetensors").is_file():
            print("$", " ".join(cmd), flush=True)
            subprocess.run([sys.executable, "-m", "kdcli", *cmd[1:]], cwd=ROOT, check=True)
        commands.append(" ".join(cmd))
    plan = planned_rows(args, methods)
    jobs = []
    for label, group, method, extra in plan:
        for seed in seeds:
            name = f"{group}-{method}-s{seed}" if not extra else f"{group}-{slug(label)}-s{seed}"
            jobs.append((method_cmd(args, method, teachers[group], seed, out / name, extra), out / name))
    if args.jobs > 1:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda job: run_one(*job), jobs))
    else:
        results = [run_one(*job) for job in jobs]
    rows = []
    for i, (label, group, method, extra) in enumerate(plan):
        done = results[i * len(seeds):(i + 1) * len(seeds)]
        commands.append(" ".join(jobs[i * len(seeds)][0]))
        accs = [info["metrics"]["test"]["student"]["top1"] for info, _ in done]
        agree = [info["metrics"]["agreement"]["student"] for info, _ in done]
        walls = [wall for _, wall in done]
        teacher_top1 = teacher_infos[group]["metrics"]["test"]["teacher"]["top1"]
        teacher_arch = teacher_infos[group]["roles"]["teacher"]["arch"]
        anchor = ANCHORS.get((args.dataset, method), "—") if group == "plain" and not extra else "—"
        rows.append([label, f"{teacher_arch} ({teacher_top1 * 100:.2f})", args.student, fmt(accs), fmt(agree),
                     len(seeds), f"{statistics.mean(walls) / 60:.1f}", anchor])
    when = dt.date.today().isoformat()
    machine = f"{args.device}: {platform.machine()} {args.machine}".strip()
    lines = [
        f"### {args.dataset}: {args.teacher_model} → {args.student}, preset `{args.preset}`, "
        f"seeds {args.seeds} ({args.tag})",
        "",
        f"Machine: {machine}; {when}. Accuracy: test top-1 % at the last epoch, mean ± std over seeds.",
        "",
        "| method | teacher (top-1) | student | test top-1 % | agreement w/ teacher % | seeds | minutes/run | paper |",
        "|---|---|---|---|---|---|---|---|",
        *["| " + " | ".join(str(c) for c in row) + " |" for row in rows],
        "",
        "Commands (first seed; the others differ only in `--seed` and `--out`):",
        "",
        "```",
        *commands,
        "```",
    ]
    if args.notes:
        lines += ["", args.notes]
    return "\n".join(lines)


def bench(args: argparse.Namespace) -> str:
    out = out_dir(args)
    teachers = {}
    for key, model in (("plain", args.teacher_model), ("bn", args.bn_teacher_model)):
        path = out / f"teacher-{model}"
        run_one(teacher_cmd(args, model, path), path)
        teachers[key] = path
    cases = [
        ("zskd", "plain", ["-n", str(args.bench_n), "--iterations", str(args.bench_iterations)]),
        ("deepinversion", "bn", ["-n", str(args.bench_n), "--iterations", str(args.bench_iterations)]),
        ("dafl", "plain", ["-n", str(args.bench_n * 10), "--epochs", "1", "--iterations", "5", "--batch-size", "512"]),
    ]
    rows, commands = [], []
    for method, teacher, extra in cases:
        target = out / f"bench-{method}"
        cmd = kd_cmd(
            "synthesize",
            "--teacher",
            rel(teachers[teacher]),
            "--method",
            method,
            "--device",
            args.device,
            "--out",
            rel(target),
            *extra,
        )
        print("$", " ".join(cmd), flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "kdcli", *cmd[1:], "--quiet", "--json", "--overwrite"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout)
        what = (
            "generator samples/s (sampling + teacher soft targets)"
            if method == "dafl"
            else f"impressions/s at {args.bench_iterations} iterations each"
        )
        rate = result["samples_per_s"]
        per_iter = f"{rate * args.bench_iterations:,.0f}" if method != "dafl" else "—"
        rows.append([method, result["teacher"]["spec"]["arch"], what, f"{rate:,.1f}", per_iter, result["device"]])
        commands.append(" ".join(cmd))
    when = dt.date.today().isoformat()
    lines = [
        f"### Synthesis speed, {args.dataset} ({args.tag}); {args.device} {args.machine}; {when}",
        "",
        "| method | teacher | what | rate | impression-iterations/s | device |",
        "|---|---|---|---|---|---|",
        *["| " + " | ".join(str(c) for c in row) + " |" for row in rows],
        "",
        "```",
        *commands,
        "```",
    ]
    return "\n".join(lines)


def write_section(path: Path, tag: str, body: str) -> None:
    text = path.read_text() if path.exists() else "# Results\n"
    if SECTION[0] not in text:
        text = text.rstrip() + f"\n\n{SECTION[0]}\n{SECTION[1]}\n"
    start, end = text.index(SECTION[0]) + len(SECTION[0]), text.index(SECTION[1])
    inner = text[start:end]
    tag_start, tag_end = f"<!-- datafree:{tag}:start -->", f"<!-- datafree:{tag}:end -->"
    block = f"{tag_start}\n{body}\n{tag_end}"
    if tag_start in inner and tag_end in inner:
        a, b = inner.index(tag_start), inner.index(tag_end) + len(tag_end)
        inner = inner[:a] + block + inner[b:]
    else:
        inner = inner.rstrip("\n") + "\n" + block + "\n"
    path.write_text(text[:start] + inner + text[end:])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--teacher-model", default="lenet5")
    parser.add_argument("--bn-teacher-model", default="resnet20", help="teacher with BatchNorm for DeepInversion")
    parser.add_argument("--student", default="lenet5-half")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument(
        "--bn-teacher-epochs", type=int, default=0, help="epochs of the BN teacher (default: --teacher-epochs)"
    )
    parser.add_argument("--teacher-lr", type=float, default=0.05)
    parser.add_argument("--teacher-preset", default="",
                        help="train the teacher with `kd train-teacher --preset P` (e.g. paper) instead of the flags")
    parser.add_argument("--teacher-extra", default="", help="extra flags for the teacher run")
    parser.add_argument("--record-metadata", default="",
                        help="record this Lopes statistics variant on the teacher first (e.g. full)")
    parser.add_argument("--common-extra", default="", help="extra flags for every student run (e.g. --threads 1)")
    parser.add_argument("--row", action="append", default=[],
                        help="an extra row 'LABEL=METHOD FLAGS' (repeatable): one method with extra flags")
    parser.add_argument("--shots", default="", help="few-shot rows: `kd distill --shots M` for each M (e.g. 1,10,100)")
    parser.add_argument("--shots-attention", action="store_true", help="also the KD+AT rows (`--attention`)")
    parser.add_argument("--shots-extra", default="", help="extra flags for the few-shot rows")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--kd-epochs", type=int, default=20)
    parser.add_argument("--kd-extra", default="--lr 0.01", help="extra flags for the kd (with data) runs")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--bn-methods", default="noise,deepinversion,kd", help="rows run with the BN teacher")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--machine", default="", help="free text naming the machine for the table")
    parser.add_argument("--out", default="runs/reproduce-datafree")
    parser.add_argument("--tag", default="default")
    parser.add_argument("--notes", default="")
    for method in METHODS[:-1]:  # kd has --kd-extra above
        parser.add_argument(f"--{method}-extra", default="", help=f"extra flags for the {method} runs")
    parser.add_argument("--bench", action="store_true", help="measure synthesis speed instead")
    parser.add_argument("--bench-n", type=int, default=1024)
    parser.add_argument("--bench-iterations", type=int, default=200)
    parser.add_argument("--no-docs", action="store_true", help="print the table, leave docs/ alone")
    parser.add_argument("--body-out", default="", help="also write the markdown block to this file")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    body = bench(args) if args.bench else reproduce(args)
    print(body)
    if args.body_out:
        Path(args.body_out).write_text(body + "\n")
    if not args.no_docs:
        write_section(ROOT / "docs" / ("benchmarks.md" if args.bench else "results.md"), args.tag, body)


if __name__ == "__main__":
    main()

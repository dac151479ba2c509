#!/usr/bin/env python
"""Online distillation, each method under its own paper protocol next to a baseline under the same budget.

For every method (``dml``, ``cl``, ``one``, ``okddip``, ``codistill``; ``NAME:PRESET`` picks another preset,
e.g. ``one:official``) the plan resolves the method's ``--preset paper`` run (scaled by ``--epochs``: its
milestones and ramp-up shrink with it) and then its matched baseline: an ``independent`` run given, flag by
flag, the method's resolved budget (epochs, batch, optimiser, learning rate and schedule, weight decay,
warm-up, data, augmentation, precision) and as many peers as the method trains members; codistillation's
baseline is itself with ``--distill-weight 0`` (the same disjoint shards). The plan refuses a pair whose
budgets differ (:mod:`kdcli.budget`), before anything runs and again from the finished runs' ``run.json``.

Every run is a real ``kd distill-online`` command (printed, and written under the table), so each number can
be reproduced alone. Accuracies are the last epoch's, on the test split, never a best epoch; the gain is
method − baseline for each seed, then mean ± std over seeds. A finished run directory with the planned
budget is reused, so an interrupted reproduction continues where it stopped. The table goes into
docs/results.md between ``<!-- online:TAG:start -->`` and ``<!-- online:TAG:end -->`` (the rest is kept).

    # the CPU table (Fashion-MNIST, LeNet-5, paper protocols scaled to 20 epochs, 3 seeds)
    python scripts/reproduce_online.py --dataset fashion-mnist --model lenet5 --split-at stage3 --epochs 20 \\
        --seeds 0,1,2 --device cpu --tag fashion-mnist-cpu-paper
    # one epoch of every run of that plan, then the total time the plan would take
    python scripts/reproduce_online.py --dataset fashion-mnist --model lenet5 --split-at stage3 --epochs 20 \\
        --seeds 0,1,2 --device cpu --estimate
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdcli.budget import budget_of, differences, run_budget  # noqa: E402
from kdcli.cli.options import OPTIONS  # noqa: E402
from kdcli.config import RunConfig, tomllib  # noqa: E402
from kdcli.presets import method_class, resolve_config  # noqa: E402

METHODS = ("dml", "cl", "one", "okddip", "codistill")
COMMAND = "distill-online"
SECTION = ("<!-- online:start -->", "<!-- online:end -->")
#: A method whose members do not each see every training image (disjoint shards) is its own baseline with
#: its distillation switched off; every other method's baseline is `independent`.
SELF_BASELINE = {"codistill": {"distill_weight": 0}}


# ---------------------------------------------------------------------------------------------
# The plan: pure, no training


@dataclass(frozen=True)
class Planned:
    """One kd run of the plan (without its seed, device-independent output folder)."""

    label: str
    method: str
    preset: str | None
    flags: dict[str, Any]
    method_flags: dict[str, Any]
    config: RunConfig = field(compare=False)
    budget: dict[str, Any] = field(compare=False)

    def argv(self) -> list[str]:
        """The ``kd distill-online`` command (add ``--seed`` and ``--out``)."""
        cmd = ["kd", COMMAND, "--method", self.method]
        if self.preset:
            cmd += ["--preset", self.preset]
        return cmd + _as_options(self.flags, self.method_flags)


@dataclass(frozen=True)
class Pair:
    """A method under its protocol and its matched baseline under the same budget."""

    name: str
    method: Planned
    baseline: Planned


def _key_options() -> dict[str, str]:
    """Config key → its kd option (``lr`` → ``--lr``)."""
    return {opt.key: opt.decls[0] for name, opt in OPTIONS.items() if opt.key and name != "student"}


def _as_options(flags: dict[str, Any], method_flags: dict[str, Any]) -> list[str]:
    keys = _key_options()
    out: list[str] = []
    for key, value in {**flags, **method_flags}.items():
        decl = keys.get(key)
        if decl is None or (key in method_flags and not OPTIONS[_name_of(key)].method_param):
            out += ["--param", f"{key}={_text(value)}"]
        elif "/" in decl:  # a boolean pair such as --nesterov/--no-nesterov
            yes, no = decl.split("/")
            out.append(yes if value else no)
        else:
            out += [decl, _text(value)]
    return out


def _name_of(key: str) -> str:
    return next(name for name, opt in OPTIONS.items() if opt.key == key and name != "student")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    if isinstance(value, float):  # the shortest text that reads back as the same number
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def budget_flags(config: RunConfig) -> dict[str, Any]:
    """Every budget field of ``config`` as a flag, so another method runs with exactly the same budget."""
    data, optim, train = config.data, config.optim, config.train
    flags: dict[str, Any] = {"dataset": data.dataset}
    if data.data_dir:
        flags["data_dir"] = data.data_dir
    flags.update({"models": list(config.models)} if config.models else {"model": config.model})
    flags.update({
        "epochs": train.epochs, "batch_size": train.batch_size, "optimizer": optim.optimizer, "lr": optim.lr,
        "momentum": optim.momentum, "nesterov": optim.nesterov, "weight_decay": optim.weight_decay,
        "schedule": optim.schedule, "milestones": list(optim.milestones), "gamma": optim.gamma,
        "warmup_epochs": optim.warmup_epochs, "val_fraction": data.val_fraction, "augment": data.augment,
        "precision": train.precision, "device": train.device,
    })
    return flags


def _resolve(label: str, method: str, preset: str | None, flags: dict[str, Any],
             method_flags: dict[str, Any]) -> Planned:
    config = resolve_config(COMMAND, method, preset=preset, flags=flags, method_flags=method_flags)
    return Planned(label, method, preset, flags, method_flags, config, budget_of(config))


def plan(methods: list[str], *, dataset: str, model: str, epochs: int | None, preset: str = "paper",
         split_at: str = "", device: str = "cpu", data_dir: str | None = None,
         settings: dict[str, Any] | None = None) -> list[Pair]:
    """Each method under its protocol and its matched baseline; raises ``ValueError`` for a pair whose budgets differ.

    Args:
        methods: method names, each optionally ``NAME:PRESET`` (else ``preset``).
        dataset, model, epochs, device, data_dir: flags of every method run (``epochs`` None = the preset's).
        split_at: ``--split-at`` for the methods that branch a model.
        settings: more config flags for every method run (``{"batch_size": 64}``); the baselines follow.
    """
    pairs = []
    for entry in methods:
        name, _, own_preset = entry.partition(":")
        cls = method_class(name, COMMAND)
        flags: dict[str, Any] = {"dataset": dataset, "model": model, "device": device, **(settings or {})}
        if epochs is not None:
            flags["epochs"] = epochs
        if data_dir:
            flags["data_dir"] = data_dir
        fields = getattr(cls.Params, "__dataclass_fields__", {})
        method_flags = {"split_at": split_at} if split_at and "split_at" in fields else {}
        chosen = own_preset or preset
        ours = _resolve(f"{name} ({chosen})", name, chosen, flags, method_flags)
        if name in SELF_BASELINE:
            off = SELF_BASELINE[name]
            base = _resolve(f"{name}, {', '.join(f'{k} {v}' for k, v in off.items())}", name, chosen, flags,
                            {**method_flags, **off})
        else:
            members = ours.budget["members"]
            base = _resolve(f"independent ×{members}", "independent", None, budget_flags(ours.config),
                            {"peers": members})
        diff = differences(ours.budget, base.budget)
        if diff:
            raise ValueError(f"refusing to pair {ours.label} with {base.label}: budgets differ ({'; '.join(diff)})")
        pairs.append(Pair(entry, ours, base))
    return pairs


# ---------------------------------------------------------------------------------------------
# Running the plan


def out_dir(runs: Path, planned: Planned, pair: Pair, seed: int, tag: str = "") -> Path:
    safe = planned.config.data.dataset.replace(":", "_").replace("/", "_")
    role = "method" if planned is pair.method else "baseline"
    return runs / f"{safe}-{planned.config.model}-{pair.name.replace(':', '-')}-{role}{tag}-s{seed}"


def run_one(planned: Planned, seed: int, out: Path, epochs: int | None = None) -> dict[str, Any]:
    """Run (or reuse a complete run with the planned budget) and return its ``run.json`` plus ``wall_s``."""
    if epochs is not None:  # the estimate's one-epoch run of the same command
        planned = dataclasses.replace(planned, flags={**planned.flags, "epochs": epochs})
    cmd = [*planned.argv(), "--seed", str(seed), "--out", str(out)]
    run_json = out / "run.json"
    if run_json.is_file():
        info = json.loads(run_json.read_text())
        if info.get("status") == "complete":
            diff = differences(run_budget(info), _expected(planned, epochs))
            if diff or info.get("seed") != seed:
                raise SystemExit(f"{out} holds a finished run with another budget or seed ({'; '.join(diff)}); "
                                 "choose another --runs folder")
            return {**info, "wall_s": info["wall_time_s"], "cpu_s": float("nan")}  # not measured again
    # an interrupted run of this plan (Ctrl-C, SIGTERM: kd saved its state) continues where it stopped
    resumable = run_json.is_file() and (out / "state.safetensors").is_file() and epochs is None
    tail = ["--resume", str(out)] if resumable else [*cmd[1:], "--overwrite"]
    print("$", shlex.join(cmd) + ("  # resumed" if resumable else ""), flush=True)
    started, cpu_before = time.time(), _children_cpu_s()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [cmd[1], *tail] if resumable else tail
    done = subprocess.run([sys.executable, "-m", "kdcli", *argv, "--quiet", "--json"], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}): {shlex.join(cmd)}\n{done.stderr.strip()[-2000:]}")
    print(f"  done in {wall:.0f}s: {out}", flush=True)
    # CPU seconds the run used: on a machine shared with other jobs a better guide than the wall time (only
    # meaningful when runs go one at a time, as --estimate runs them)
    return {**json.loads(run_json.read_text()), "wall_s": wall, "cpu_s": _children_cpu_s() - cpu_before}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _expected(planned: Planned, epochs: int | None) -> dict[str, Any]:
    if epochs is None:
        return planned.budget
    # the estimate's one-epoch runs: the same command with --epochs 1 (milestones scale again)
    flags = {**planned.flags, "epochs": epochs}
    config = resolve_config(COMMAND, planned.method, preset=planned.preset, flags=flags,
                            method_flags=planned.method_flags)
    return budget_of(config)


def run_all(jobs: list[tuple[Planned, int, Path]], parallel: int, epochs: int | None = None) -> list[dict[str, Any]]:
    if parallel <= 1:
        return [run_one(p, seed, out, epochs) for p, seed, out in jobs]
    with ThreadPoolExecutor(parallel) as pool:  # several small runs share a GPU better than one alone
        return list(pool.map(lambda job: run_one(*job, epochs), jobs))


def summarise(info: dict[str, Any]) -> dict[str, Any]:
    """Per run: the members' mean, the leader (OKDDip), the inference model's top-1, the ensemble."""
    test = {role: scores["top1"] * 100 for role, scores in info["metrics"]["test"].items()}
    members = [v for role, v in test.items() if role.startswith(("peer", "branch"))]
    row = {"members": statistics.fmean(members), "ensemble": test.get("ensemble", float("nan")),
           "wall_s": info["wall_s"], "epoch_s": [h["time_s"] for h in info["history"]]}
    row["leader"] = test.get("leader")
    row["top1"] = row["leader"] if row["leader"] is not None else row["members"]
    return row


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def gain(method: list[dict], baseline: list[dict], key: str) -> str:
    return mean_std([m[key] - b[key] for m, b in zip(method, baseline)])


def schedule(info: dict[str, Any]) -> str:
    """A run's budget and hyperparameters in one line, from its ``run.json``."""
    cfg = info["config"]
    optim, train, data = cfg["optim"], cfg["train"], cfg["data"]
    opt = optim["optimizer"].upper()
    if optim["optimizer"] == "sgd":
        opt += f" {'Nesterov ' if optim['nesterov'] else ''}momentum {optim['momentum']:g}"
    sched = optim["schedule"]
    if sched == "step":
        sched = f"÷{1 / optim['gamma']:g} at epochs {_text(optim['milestones'])}"
    warm = f" after {optim['warmup_epochs']:g} warm-up epoch(s)" if optim["warmup_epochs"] else ""
    budget = run_budget(info)
    params = ", ".join(f"{k} {_text(v)}" for k, v in info.get("params", {}).items() if k != "split_at")
    return (f"{train['epochs']} epochs, batch {train['batch_size']}, {opt}, lr {optim['lr']:g}{warm}, {sched}, "
            f"wd {optim['weight_decay']:g}, {budget['precision']}, val {data['val_fraction']:g}, "
            f"augment {data['augment']}; {params}")


def table(pairs: list[Pair], results: dict[str, tuple[list[dict], list[dict]]], infos: dict[str, tuple[dict, dict]],
          args: argparse.Namespace) -> str:
    seeds = [int(s) for s in args.seeds.split(",")]
    first = infos[pairs[0].name][0]
    where = first.get("device_name") or first.get("device")
    lines = [
        f"**{args.label or args.dataset}, {args.model}, each method under its scaled paper protocol next to its matched "
        f"baseline; seeds {_text(seeds)}; {where}**",
        "",
        f"Top-1 % on the test split at the last epoch, mean ± std over {len(seeds)} seed(s). \"top-1\" is the "
        "model kept for inference: OKDDip's leader, else the mean over the run's peers or branches. The gain "
        "is method − baseline for each seed, then mean ± std.",
        "",
        "| method (preset) | baseline | members | method top-1 | baseline top-1 | gain | method ensemble | "
        "baseline ensemble | ensemble gain | s/run (method, baseline) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pair in pairs:
        ours, base = results[pair.name]
        lines.append(
            f"| {pair.method.label} | {pair.baseline.label} | {pair.method.budget['members']} | "
            f"{mean_std([r['top1'] for r in ours])} | {mean_std([r['members'] for r in base])} | "
            f"{gain(ours, [{**b, 'top1': b['members']} for b in base], 'top1')} | "
            f"{mean_std([r['ensemble'] for r in ours])} | {mean_std([r['ensemble'] for r in base])} | "
            f"{gain(ours, base, 'ensemble')} | "
            f"{statistics.fmean(r['wall_s'] for r in ours):.0f}, {statistics.fmean(r['wall_s'] for r in base):.0f} |"
        )
    lines += ["", "Each row's budget (its method and its baseline trained under exactly this, checked field by "
              "field from their run.json), then what kd adjusted:", ""]
    for pair in pairs:
        method_info, base_info = infos[pair.name]
        adjusted = "; ".join(f"{k}: {v}" for k, v in method_info["config"].get("adjusted", {}).items())
        lines.append(f"- **{pair.method.label}**: {schedule(method_info)}" + (f". Adjusted: {adjusted}" if adjusted
                                                                               else ""))
        lines.append(f"  - baseline {pair.baseline.label}: {schedule(base_info)}")
    lines += ["", "Commands (the first seed; the others change `--seed` and `--out`):", "", "```"]
    for pair in pairs:
        for planned in (pair.method, pair.baseline):
            out = out_dir(Path(args.runs), planned, pair, seeds[0])
            lines.append(shlex.join([*planned.argv(), "--seed", str(seeds[0]), "--out", str(out)]))
    lines += ["```", f"Made by `python scripts/reproduce_online.py {shlex.join(sys.argv[1:])}`."]
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


def estimate(pairs: list[Pair], args: argparse.Namespace) -> dict[str, Any]:
    """One epoch of every run of the plan (first seed, one at a time), then the plan's total time."""
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = Path(args.runs)
    rows, total, cpu_total = [], 0.0, 0.0
    load_before = round(os.getloadavg()[0], 2)
    for pair in pairs:
        for planned in (pair.method, pair.baseline):
            info = run_one(planned, seeds[0], out_dir(runs, planned, pair, seeds[0], "-estimate"), epochs=1)
            epoch_s = info["history"][0]["time_s"]
            overhead_s = max(0.0, info["wall_s"] - epoch_s)
            epochs = planned.config.train.epochs
            run_s = epoch_s * epochs + overhead_s
            # the same split for CPU seconds: the share of the run's CPU time spent in its one epoch
            cpu_epoch_s = info["cpu_s"] * epoch_s / max(info["wall_s"], 1e-9)
            cpu_run_s = cpu_epoch_s * epochs + (info["cpu_s"] - cpu_epoch_s)
            total += run_s * len(seeds)
            cpu_total += cpu_run_s * len(seeds)
            rows.append({"run": planned.label, "pair": pair.name, "epoch_s": epoch_s, "overhead_s": round(overhead_s, 1),
                         "epochs": epochs, "run_s": round(run_s, 1), "cpu_epoch_s": round(cpu_epoch_s, 1),
                         "cpu_run_s": round(cpu_run_s, 1)})
    print(f"\nOne epoch of each run ({args.label or args.dataset}, {args.model}, device {args.device}; "
          f"load average before: {load_before}, after: {os.getloadavg()[0]:.1f}):\n")
    print("| run | wall s/epoch (1st epoch, incl. warm-up) | start-up + eval s | CPU s/epoch | epochs | wall s per seed "
          "| CPU s per seed |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['epoch_s']:.1f} | {r['overhead_s']:.0f} | {r['cpu_epoch_s']:.1f} | {r['epochs']} | "
              f"{r['run_s']:.0f} | {r['cpu_run_s']:.0f} |")
    print(f"\nEstimated total for {len(seeds)} seed(s), one run at a time: {total / 3600:.2f} h wall at this load "
          f"({total:.0f} s); {cpu_total / 3600:.2f} CPU-hours")
    return {"rows": rows, "total_s": round(total, 1), "cpu_total_s": round(cpu_total, 1), "seeds": len(seeds),
            "load_average": [load_before, round(os.getloadavg()[0], 2)]}


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["batch_size=64", "lr=0.05"]`` → config flags (values read as TOML, else as text)."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            settings[key.strip().replace("-", "_")] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            settings[key.strip().replace("-", "_")] = value
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--label", default="", help="the dataset's name in the table (default: --dataset)")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--split-at", default="", help="first per-branch stage for cl/one/okddip (default: the last)")
    parser.add_argument("--methods", default=",".join(METHODS), help="NAME or NAME:PRESET, comma-separated")
    parser.add_argument("--preset", default="paper", help="every method's preset unless NAME:PRESET names one")
    parser.add_argument("--epochs", type=int, default=None, help="scales each paper protocol (default: the paper's)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another config value for every method run (its baseline follows), e.g. batch_size=64")
    parser.add_argument("--runs", default="runs/online-paper", help="where run directories go")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (a GPU fits several small ones)")
    parser.add_argument("--estimate", action="store_true",
                        help="run one epoch of every planned run and print the plan's total time; no table")
    parser.add_argument("--estimate-json", default=None, help="with --estimate: also write the numbers here")
    parser.add_argument("--plan-only", action="store_true", help="print the planned commands and budgets only")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--tag", default=None, help="name of the table's block in the doc (default DATASET-MODEL)")
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    parser.add_argument("--body-out", default=None, help="also write the table's block to this file")
    args = parser.parse_args()

    pairs = plan(args.methods.split(","), dataset=args.dataset, model=args.model, epochs=args.epochs,
                 preset=args.preset, split_at=args.split_at, device=args.device, data_dir=args.data_dir,
                 settings=parse_settings(args.set))
    if args.plan_only:
        for pair in pairs:
            for planned in (pair.method, pair.baseline):
                print(shlex.join(planned.argv()))
                print("   ", json.dumps(planned.budget))
        return
    if args.estimate:
        numbers = estimate(pairs, args)
        if args.estimate_json:
            Path(args.estimate_json).write_text(json.dumps(numbers, indent=1))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = Path(args.runs)
    # seed by seed: a reproduction stopped early still has whole tables for its first seeds
    jobs = [(planned, seed, out_dir(runs, planned, pair, seed))
            for seed in seeds for pair in pairs for planned in (pair.method, pair.baseline)]
    done = dict(zip([(id(planned), seed) for planned, seed, _ in jobs], run_all(jobs, args.jobs)))
    results: dict[str, tuple[list[dict], list[dict]]] = {}
    for pair in pairs:
        for seed in seeds:  # the finished runs, checked again: a pair whose budgets differ is not shown
            ours, base = done[(id(pair.method), seed)], done[(id(pair.baseline), seed)]
            diff = differences(run_budget(ours), run_budget(base))
            if diff:
                raise SystemExit(f"refusing to pair {pair.method.label} with {pair.baseline.label} (seed {seed}): "
                                 f"their runs' budgets differ ({'; '.join(diff)})")
        results[pair.name] = ([summarise(done[(id(pair.method), s)]) for s in seeds],
                              [summarise(done[(id(pair.baseline), s)]) for s in seeds])
    infos = {pair.name: (done[(id(pair.method), seeds[0])], done[(id(pair.baseline), seeds[0])]) for pair in pairs}
    body = table(pairs, results, infos, args)
    print(body)
    if args.body_out:
        Path(args.body_out).write_text(body + "\n")
    if not args.no_doc:
        write_section(Path(args.doc), args.tag or f"{args.dataset}-{args.model}", body)
        print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()

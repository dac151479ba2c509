"""scripts/reproduce_datafree.py's plan (no training): extra rows, few-shot rows and the commands they print."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reproduce_datafree.py"
spec = importlib.util.spec_from_file_location("reproduce_datafree", SCRIPT)
reproduce = importlib.util.module_from_spec(spec)
sys.modules["reproduce_datafree"] = reproduce
spec.loader.exec_module(reproduce)


def args(*argv: str):
    return reproduce.build_parser().parse_args(list(argv))


def test_rows_follow_the_methods_then_the_extra_rows_then_the_few_shot_rows():
    a = args("--methods", "noise,dafl,kd,deepinversion", "--row", "lopes, full=lopes --param statistics=full",
             "--shots", "1,10", "--shots-attention")
    labels = [row[0] for row in reproduce.planned_rows(a, a.methods.split(","))]
    assert labels == ["noise", "dafl", "kd (with data)", "lopes, full", "kd, 1 real image/class",
                      "kd+at, 1 real image/class", "kd, 10 real images/class", "kd+at, 10 real images/class",
                      "noise", "deepinversion", "kd (with data)"]


def test_an_extra_row_runs_its_method_with_its_flags_after_the_common_ones(tmp_path):
    a = args("--row", "lopes, full=lopes --param statistics=full", "--common-extra", "--threads 1",
             "--teacher-preset", "paper")
    label, group, method, extra = reproduce.planned_rows(a, ["noise"])[-1]
    cmd = reproduce.method_cmd(a, method, tmp_path / "t", 2, tmp_path / "out", extra)
    assert cmd[:2] == ["kd", "distill-datafree"] and cmd[cmd.index("--method") + 1] == "lopes"
    assert cmd[-4:] == ["--threads", "1", "--param", "statistics=full"] and "--seed" in cmd
    teacher = reproduce.teacher_cmd(a, a.teacher_model, tmp_path / "t")
    assert teacher[teacher.index("--preset") + 1] == "paper" and "--lr" not in teacher


def test_a_malformed_row_is_refused():
    a = args("--row", "no method here")
    with pytest.raises(SystemExit, match="LABEL=METHOD FLAGS"):
        reproduce.planned_rows(a, ["noise"])

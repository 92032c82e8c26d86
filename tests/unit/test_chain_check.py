"""The whole chain is checked before anything runs (issue 21, item 7): `runner apply`, a submission to the
server and an inbox drop refuse a chain whose `next:` names a missing spec, loops without max_iterations, or
passes an input its target does not declare — located at the rule, exit 1, nothing recorded, no container —
through the one check `runner plan` uses (graph.check).  `plan --input` checks required inputs; a missing mount
source is a problem or a warning at validate/plan, and a spec error (exit 1) at launch.

The engine runs on the shipped FakeBackend (nothing is created anyway: that is the point); the command line
runs as a subprocess without a Docker engine (so a refusal can only come from the check), or in-process with
the fake backend where the launch itself is reached."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runner.decisions import graph
from runner.backends.fake import FakeBackend
from runner.cli import exit_code
from runner.server.server import Server
from runner.engine import Engine
from runner.errors import SpecError
from runner.decisions.policy import MountPolicy, source_findings
from runner.spec import load_spec
from runner.store import Store

HEAD = """\
apiVersion: runner/v1
kind: Phase
name: {name}
container:
  image: trainer:latest
  command: [python3, -c, "print('hi')"]
"""


def spec(folder: Path, file: str, name: str, tail: str = "") -> Path:
    path = folder / file
    path.write_text(HEAD.format(name=name) + textwrap.dedent(tail))
    return path


def line_of(path: Path, text: str) -> int:
    """1-based line of the first line of ``path`` containing ``text``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.fixture
def engine(tmp_path):
    backend = FakeBackend()
    eng = Engine(Store(tmp_path / "runs" / "runner.db"), backend, tmp_path / "runs", poll_s=0.001)
    eng.fake = backend  # type: ignore[attr-defined]
    return eng


def assert_nothing_ran(eng):
    assert eng.store.submissions() == []  # no run, so no phase row
    assert eng.fake.launched == [] and eng.fake.containers == {}


def refused(eng, first: Path):
    """`apply` of ``first`` refused with exactly one problem, before anything ran: that problem."""
    with pytest.raises(SpecError) as exc:
        eng.apply(first)
    (problem,) = exc.value.problems
    assert_nothing_ran(eng)
    return problem


# ---------------------------------------------------------------------- the chain, at the rule


@pytest.fixture
def missing_next(tmp_path):
    spec(tmp_path, "two.yaml", "two")
    return spec(tmp_path, "one.yaml", "one", """\
        next:
          - {when: success, apply: two.yaml}
          - {when: failure, apply: missing-next.yaml}
        """)


def test_a_missing_next_spec_is_named_at_its_rule(missing_next):
    (problem,) = graph.check(missing_next)
    assert (problem.file, problem.line, problem.path) == (str(missing_next), line_of(missing_next, "missing-next"),
                                                          "next[1].apply")
    assert problem.message.startswith("missing-next.yaml: cannot read spec: No such file or directory")
    assert str(problem).startswith(f"{missing_next}:{problem.line}:")  # FILE:LINE:COL: next[1].apply: ...


def test_apply_refuses_a_missing_next_spec_before_anything_runs(engine, missing_next):
    with pytest.raises(SpecError) as exc:
        engine.apply(missing_next)
    assert exit_code(exc.value) == 1
    assert f"{missing_next}:{line_of(missing_next, 'missing-next')}:" in str(exc.value)
    assert "next[1].apply: missing-next.yaml: cannot read spec" in str(exc.value)
    assert_nothing_ran(engine)


def test_a_submission_to_the_server_is_refused_the_same_way(engine, missing_next):
    with pytest.raises(SpecError, match=r"next\[1\]\.apply: missing-next.yaml"):
        engine.submit(missing_next, {}, source="apply-server")
    assert_nothing_ran(engine)


def test_a_missing_spec_two_rules_away_is_named_at_the_rule_that_names_it(engine, tmp_path):
    mid = spec(tmp_path, "mid.yaml", "mid", "next:\n  - {when: always, apply: gone.yaml}\n")
    first = spec(tmp_path, "first.yaml", "first", "next:\n  - {when: success, apply: mid.yaml}\n")
    problem = refused(engine, first)
    assert (problem.file, problem.line, problem.path) == (str(mid), line_of(mid, "gone.yaml"), "next[0].apply")


def test_an_invalid_next_spec_is_listed_in_its_file_and_pointed_at_from_the_rule(engine, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD.format(name="bad") + "  gpus: many\n")
    first = spec(tmp_path, "first.yaml", "first", "next:\n  - {when: success, apply: bad.yaml}\n")
    with pytest.raises(SpecError) as exc:
        engine.apply(first)
    text = str(exc.value)
    assert f"{first}:{line_of(first, 'bad.yaml')}:" in text and "next[0].apply: bad.yaml: bad.yaml is not a valid spec" in text
    assert f"{bad}:7:9: container.gpus:" in text
    assert_nothing_ran(engine)


@pytest.fixture
def loop(tmp_path):
    spec(tmp_path, "b.yaml", "b", "next:\n  - {when: failure, apply: a.yaml}\n")
    return spec(tmp_path, "a.yaml", "a", "next:\n  - {when: always, apply: b.yaml}\n"), tmp_path / "b.yaml"


def test_apply_refuses_a_loop_without_max_iterations(engine, loop):
    first, back = loop
    problem = refused(engine, first)
    assert (problem.file, problem.line, problem.path) == (str(back), line_of(back, "a.yaml"), "next[0].apply")
    assert "loops back to an earlier phase; set max_iterations" in problem.message
    assert exit_code(SpecError([problem])) == 1


def test_a_bounded_loop_runs(engine, loop):
    first, back = loop
    back.write_text(back.read_text().replace("apply: a.yaml}", "apply: a.yaml, max_iterations: 2}"))
    result = engine.apply(first)
    assert [p.phase for p in result.phases] == ["a", "b"] and len(engine.fake.launched) == 2


def test_apply_refuses_a_rule_passing_an_undeclared_input(engine, tmp_path):
    target = spec(tmp_path, "b.yaml", "b", "inputs: {x: 1}\n")
    first = spec(tmp_path, "a.yaml", "a", "next:\n  - {when: success, apply: b.yaml, with: {x: 2, y: 3}}\n")
    problem = refused(engine, first)
    assert (problem.file, problem.line, problem.path) == (str(first), line_of(first, "with"), "next[0].with.y")
    assert problem.message == "b.yaml declares no input 'y' (declared: x)"
    assert target.exists()


def test_retry_with_sets_only_the_specs_own_inputs(engine, tmp_path):
    first = spec(tmp_path, "a.yaml", "a", """\
        inputs: {resume_from: ""}
        retry: {on: [oom], with: {resume: "${{ phase.last_checkpoint }}"}}
        """)
    with pytest.raises(SpecError) as exc:
        engine.apply(first)
    (problem,) = exc.value.problems
    assert (problem.line, problem.path) == (line_of(first, "retry"), "retry.with.resume")
    assert "declares no input 'resume'" in problem.message
    assert_nothing_ran(engine)


def test_a_chained_spec_may_take_its_required_input_from_the_command_line(engine, tmp_path):
    spec(tmp_path, "b.yaml", "b", "inputs: {data: null}\n")
    first = spec(tmp_path, "a.yaml", "a", "next:\n  - {when: success, apply: b.yaml}\n")
    with pytest.raises(SpecError, match=r"next\[0\]: b.yaml requires input 'data'; pass it in with:"):
        engine.apply(first)
    assert_nothing_ran(engine)
    result = engine.apply(first, {"data": "/d"})  # --input reaches every spec of the chain that declares it
    assert [(p.phase, p.status) for p in result.phases] == [("a", "succeeded"), ("b", "succeeded")]


def test_check_with_inputs_names_required_and_unknown_ones(tmp_path):
    first = spec(tmp_path, "a.yaml", "a", "inputs: {lr: null, steps: 10}\n")
    problems = {p.path: p for p in graph.check(first, {"stepz": "3"})}
    assert problems["inputs.lr"].message == "required input not given; pass --input lr=VALUE"
    assert problems["inputs.lr"].line == line_of(first, "lr")
    assert "--input stepz: no spec of this chain declares such an input (declared: lr, steps)" in problems["inputs"].message
    assert graph.check(first, {"lr": "1e-6"}) == []
    assert graph.check(first) == []  # inputs not known (plan without --input): required ones are not judged


# ---------------------------------------------------------------------- the command line


def cli(tmp_path, *args, cwd=None):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "RUNNER_STATE": ""}
    return subprocess.run([sys.executable, "-m", "runner.cli", "--state", str(tmp_path / "runs" / "runner.db"), *args],
                          capture_output=True, text=True, env=env, cwd=cwd or tmp_path, timeout=120)


@pytest.mark.parametrize("case", ["missing", "loop", "undeclared"])
def test_cli_apply_refuses_a_broken_chain_with_exit_1_before_the_engine_is_asked(tmp_path, case):
    """No Docker engine here: before the check, `apply` would have failed on the engine (exit 3) — or, with
    one, run the first phase and failed at the hand-over."""
    if case == "missing":
        first = spec(tmp_path, "a.yaml", "a", "next:\n  - {when: failure, apply: missing-next.yaml}\n")
        where, text = (first, "missing-next"), "next[0].apply: missing-next.yaml: cannot read spec"
    elif case == "loop":
        spec(tmp_path, "b.yaml", "b", "next:\n  - {when: failure, apply: a.yaml}\n")
        first = spec(tmp_path, "a.yaml", "a", "next:\n  - {when: always, apply: b.yaml}\n")
        where, text = (tmp_path / "b.yaml", "a.yaml"), "next[0].apply: this rule loops back"
    else:
        spec(tmp_path, "b.yaml", "b")
        first = spec(tmp_path, "a.yaml", "a", "next:\n  - {when: always, apply: b.yaml, with: {lr: 1}}\n")
        where, text = (first, "with"), "next[0].with.lr: b.yaml declares no input 'lr'"
    out = cli(tmp_path, "apply", "a.yaml")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{where[0]}:{line_of(*where)}:" in out.stderr and text in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "engine" not in out.stderr.lower()
    store = Store(tmp_path / "runs" / "runner.db")
    assert store.submissions() == []


def test_cli_plan_input_checks_required_inputs(tmp_path):
    first = spec(tmp_path, "a.yaml", "a", "inputs: {resume_from: null, lr: 1e-6}\n")
    out = cli(tmp_path, "plan", "a.yaml", "--input", "lr=1e-5")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{first}:{line_of(first, 'resume_from')}:10: inputs.resume_from: required input not given; pass --input resume_from=VALUE" \
        in out.stderr
    out = cli(tmp_path, "plan", "a.yaml", "-i", "resume_from=/ckpt/model.pth")
    assert out.returncode == 0, out.stderr
    assert "all valid" in out.stdout
    out = cli(tmp_path, "plan", "a.yaml", "-i", "resume_from=/x", "-i", "typo=1")
    assert out.returncode == 1 and "--input typo: no spec of this chain declares such an input" in out.stderr
    out = cli(tmp_path, "plan", "a.yaml")  # without --input: the graph, and what apply will need
    assert out.returncode == 0, out.stderr
    assert "required at apply: --input resume_from=VALUE" in out.stdout


def test_cli_plan_names_a_missing_next_spec_at_its_rule(tmp_path):
    first = spec(tmp_path, "a.yaml", "a", "next:\n  - {when: failure, apply: missing-next.yaml}\n")
    out = cli(tmp_path, "plan", "a.yaml")
    assert out.returncode == 1
    assert f"{first}:{line_of(first, 'missing-next')}:" in out.stderr and "next[0].apply" in out.stderr
    assert ":0:0:" not in out.stderr


# ---------------------------------------------------------------------- mount sources


MOUNTS = """\
inputs: {data: /nonexistent-default-data}
container:
  image: trainer:latest
  command: [python3, -c, "print('hi')"]
  mounts:
"""


def mounting(folder: Path, file: str, name: str, *mounts: str, tail: str = "") -> Path:
    path = folder / file
    path.write_text(f"apiVersion: runner/v1\nkind: Phase\nname: {name}\n" + MOUNTS
                    + "".join(f"    - {m}\n" for m in mounts) + tail)
    return path


def test_findings_problem_or_warning_by_whether_the_source_may_appear(tmp_path):
    (tmp_path / "there").mkdir()
    path = mounting(tmp_path, "m.yaml", "m",
                    "{source: ./there, target: /a}",                       # exists: nothing
                    "{source: ./out, target: /b, create: true}",           # runner makes it: nothing
                    "{source: ./absent, target: /c}",                      # problem
                    '{source: "${{ run.dir }}/prev", target: /d}',         # first phase: problem; later: warning
                    '{source: "${{ inputs.data }}", target: /e}',          # a default: warning
                    '{source: "${{ phase.dir }}", target: /f}')            # never there before launch: problem
    loaded = load_spec(path)
    problems, warnings = source_findings(loaded, first=True)
    assert {p.path for p in problems} == {"container.mounts[2].source", "container.mounts[3].source",
                                          "container.mounts[5].source"}
    assert [w.path for w in warnings] == ["container.mounts[4].source"]
    assert warnings[0].message.startswith("warning: ${{ inputs.data }} (/nonexistent-default-data) does not exist here")
    assert problems[0].line == line_of(path, "./absent")
    problems, warnings = source_findings(loaded, first=False)  # a later phase: an earlier one may write them
    assert [p.path for p in problems] == ["container.mounts[5].source"]
    assert {w.path for w in warnings} == {f"container.mounts[{i}].source" for i in (2, 3, 4)}
    problems, _ = source_findings(loaded, {"data": str(tmp_path / "given")}, first=True)  # given and absent
    assert "container.mounts[4].source" in {p.path for p in problems}


def test_cli_validate_warns_of_a_source_that_may_appear_and_fails_on_one_that_cannot(tmp_path):
    later = mounting(tmp_path, "later.yaml", "later", '{source: "${{ run.dir }}/phase1-out", target: /in}')
    out = cli(tmp_path, "validate", "later.yaml")
    assert out.returncode == 0, out.stdout
    assert f"later.yaml:{line_of(later, 'phase1-out')}:16: container.mounts[0].source: warning:" in out.stdout
    assert "later.yaml: ok (phase later), 1 warning(s)" in out.stdout
    absent = mounting(tmp_path, "absent.yaml", "absent", "{source: ./data, target: /data, read_only: true}")
    out = cli(tmp_path, "validate", "absent.yaml")
    assert out.returncode == 1
    assert (f"absent.yaml:{line_of(absent, './data')}:16: container.mounts[0].source: ./data ({tmp_path}/data) "
            "does not exist") in out.stdout


def test_cli_plan_checks_sources_across_the_chain(tmp_path):
    mounting(tmp_path, "b.yaml", "b", "{source: ./made-by-a, target: /in}")
    first = mounting(tmp_path, "a.yaml", "a", "{source: ./out, target: /out, create: true}",
                     tail="next:\n  - {when: success, apply: b.yaml}\n")
    out = cli(tmp_path, "plan", "a.yaml")
    assert out.returncode == 0, out.stderr  # a later spec's source may be written by an earlier phase
    assert "b.yaml:9:16: container.mounts[0].source: warning: ./made-by-a" in out.stderr
    assert "all valid, 1 warning(s)" in out.stdout
    first.write_text(first.read_text().replace("./out, target: /out, create: true", "./in, target: /in"))
    out = cli(tmp_path, "plan", "a.yaml")
    assert out.returncode == 1
    assert f"{first}:9:16: container.mounts[0].source: ./in ({tmp_path}/in) does not exist" in out.stderr


def test_a_missing_bind_source_at_launch_is_a_located_spec_error(engine, tmp_path):
    path = mounting(tmp_path, "m.yaml", "m", "{source: ./data, target: /data}")
    with pytest.raises(SpecError) as exc:
        engine.apply(path)
    assert exit_code(exc.value) == 1
    (problem,) = exc.value.problems
    assert (problem.file, problem.line, problem.path) == (str(path), line_of(path, "./data"), "container.mounts[0].source")
    assert f"mount source {tmp_path}/data does not exist" in problem.message
    (run,) = engine.store.submissions()
    (phase,) = engine.store.phases(run["run_id"])
    assert phase["status"] == "error" and "does not exist" in phase["reason"]  # refused before it ran
    assert engine.fake.launched == [] and engine.fake.containers == {}


# ---------------------------------------------------------------------- the inbox


@pytest.fixture
def server(tmp_path):
    runs = tmp_path / "runs"
    library = tmp_path / "specs"
    library.mkdir()
    srv = Server(Store(runs / "runner.db"), FakeBackend, runs, runs / "inbox", [library], [], "test", 2,
                 policy=MountPolicy.of([runs, library]), quiet=1.0, say=lambda line: None)
    srv.inbox.start()
    yield srv
    srv.inbox.stop()


def settle(srv, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = srv.inbox.scan(srv._accept)
        if out:
            return out
        time.sleep(0.1)
    return []


@pytest.mark.parametrize("case", ["missing", "loop"])
def test_an_inbox_drop_with_a_broken_chain_is_rejected_with_the_reason(server, case):
    library, inbox = server.specs[0], server.inbox.folder
    if case == "missing":
        mid = spec(library, "mid.yaml", "mid", "next:\n  - {when: always, apply: gone.yaml}\n")
        where, text = f"{mid}:{line_of(mid, 'gone.yaml')}:", "next[0].apply: gone.yaml: cannot read spec"
    else:
        mid = spec(library, "mid.yaml", "mid", "next:\n  - {when: always, apply: one.yaml}\n")
        where, text = f"{mid}:{line_of(mid, 'one.yaml')}:", "next[0].apply: this rule loops back"
    one = spec(library, "one.yaml", "one", "next:\n  - {when: success, apply: mid.yaml}\n")
    (inbox / "one.yaml").write_text(one.read_text())  # a copy of the library spec: runs as that file
    (outcome,) = settle(server)
    assert outcome.state == "rejected", outcome.reason
    assert where in outcome.reason and text in outcome.reason
    assert where in (inbox / "rejected" / "one.yaml.error.txt").read_text()
    assert server.store.submissions() == []

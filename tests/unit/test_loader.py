"""The loader: located errors, strict YAML, numbers as meant."""
import pytest

from runner.errors import SpecError
from runner.spec import load_spec, load_spec_text
from runner.spec.loader import MAX_BYTES, MAX_NODES
from tests.conftest import MINIMAL


def problems(text, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    return [str(p) for p in exc.value.problems], str(path)


def test_minimal_spec_loads(write_spec):
    loaded = load_spec(write_spec(MINIMAL))
    assert loaded.phase.name == "p1"
    assert loaded.phase.container.gpus == 0
    assert loaded.phase.container.command == ["python3", "-c", "print('hi')"]
    assert len(loaded.sha256) == 64


def test_three_mistakes_give_three_located_lines(tmp_path):
    text = MINIMAL.replace('command: [python3, -c, "print(\'hi\')"]', "command: python train.py") + "  gpus: many\n  shm_sise: 1g\n"
    lines, f = problems(text.lstrip("\n"), tmp_path)
    assert lines == [
        f"{f}:6:12: container.command: must be an argv list such as [python, train.py, --lr, '1e-6']; a plain string is never split by a shell",
        f"{f}:7:9: container.gpus: must be a count (0 = CPU), 'all', or a list of device ids such as [0, 1]; got 'many'",
        f"{f}:8:3: container.shm_sise: unknown field 'shm_sise'; did you mean 'shm_size'?",
    ]


def test_unknown_top_level_field_suggests(tmp_path):
    lines, f = problems(MINIMAL.lstrip("\n") + "timout: 3h\n", tmp_path)
    assert lines == [f"{f}:7:1: timout: unknown field 'timout'; did you mean 'timeout'?"]


def test_unknown_field_in_list_item_suggests(tmp_path):
    text = MINIMAL.lstrip("\n") + "  mounts:\n    - {source: /a, target: /b, readonly: true}\n"
    lines, f = problems(text, tmp_path)
    assert lines == [f"{f}:8:32: container.mounts[0].readonly: unknown field 'readonly'; did you mean 'read_only'?"]


def test_missing_required_fields_point_at_parent(tmp_path):
    lines, f = problems("apiVersion: runner/v1\nkind: Phase\nname: x\ncontainer:\n  image: a\n", tmp_path)
    assert lines == [f"{f}:5:3: container.command: missing required field 'command'"]


def test_wrong_api_version_and_name(tmp_path):
    text = MINIMAL.lstrip("\n").replace("runner/v1", "runner/v2").replace("name: p1", "name: Bad Name")
    lines, f = problems(text, tmp_path)
    assert lines[0].startswith(f"{f}:1:13: apiVersion: Input should be 'runner/v1', got 'runner/v2'")
    assert lines[1] == f"{f}:3:7: name: lower-case letters, digits, '.', '_' or '-' (at most 63, starting and ending " \
        "with a letter or digit), e.g. indextts-phase1; got 'Bad Name'"


def test_duplicate_keys_are_rejected(tmp_path):
    lines, f = problems(MINIMAL.lstrip("\n") + "name: p2\n", tmp_path)
    assert lines == [f"{f}:7:1: name: duplicate key 'name' (first set at line 3)"]


def test_numbers_are_read_as_meant(write_spec):
    loaded = load_spec(write_spec(MINIMAL + "inputs: {lr: 1e-6, steps: 5000, flag: on, exp: 1.5E+3}\n"))
    inputs = loaded.phase.inputs
    assert inputs["lr"] == 1e-6 and isinstance(inputs["lr"], float)
    assert inputs["steps"] == 5000 and isinstance(inputs["steps"], int)
    assert inputs["flag"] == "on"  # YAML 1.2: not a boolean
    assert inputs["exp"] == 1500.0


def test_argv_numbers_keep_their_spelling(write_spec):
    text = MINIMAL.replace("""command: [python3, -c, "print('hi')"]""", "command: [train, --lr, 1e-6, --steps, 5000, --x, 0.10, --y, true]")
    assert load_spec(write_spec(text)).phase.container.command == ["train", "--lr", "1e-6", "--steps", "5000", "--x", "0.10", "--y", "true"]


def test_yaml_syntax_error_is_located(tmp_path):
    lines, f = problems("apiVersion: runner/v1\nkind: [Phase\n", tmp_path)
    assert len(lines) == 1 and lines[0].startswith(f"{f}:3:1: invalid YAML")


def test_custom_tags_are_refused(tmp_path):
    lines, f = problems(MINIMAL.lstrip("\n") + "description: !!python/object:os.system ls\n", tmp_path)
    assert any("unsupported YAML tag" in line and line.startswith(f"{f}:7:14") for line in lines)


def test_file_size_is_capped(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(MINIMAL + "description: '" + "x" * MAX_BYTES + "'\n")
    with pytest.raises(SpecError, match="at most 1024 KiB"):
        load_spec(path)


def test_alias_bomb_is_refused():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    prev = "a"
    for i in range(6):
        bomb += f"b{i}: &b{i} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
        prev = f"b{i}"
    with pytest.raises(SpecError, match=f"over {MAX_NODES} values"):
        load_spec_text(bomb, "bomb.yaml")


def test_empty_and_non_mapping_files(tmp_path):
    lines, f = problems("", tmp_path)
    assert "the file is empty" in lines[0]
    lines, f = problems("- a\n- b\n", tmp_path)
    assert "must be a mapping" in lines[0]


def test_unknown_reference_is_located(tmp_path):
    text = MINIMAL.lstrip("\n").replace("print('hi')", "${{ inputs.nope }}")
    lines, f = problems(text, tmp_path)
    assert lines == [f"{f}:6:26: container.command[2]: ${{{{ inputs.nope }}}} is not declared under inputs: (none declared)"]


def test_unreadable_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")


def test_relative_mount_target_rejected(tmp_path):
    text = MINIMAL.lstrip("\n") + "  mounts: [{source: ./data, target: data}]\n"
    lines, f = problems(text, tmp_path)
    assert lines == [f"{f}:7:37: container.mounts[0].target: must be an absolute path inside the container, got 'data'"]


def test_reserved_labels_and_bad_sizes(tmp_path):
    text = MINIMAL.lstrip("\n") + "  shm_size: lots\nlabels: {runner.phase: x}\ntimeout: soon\n"
    lines, f = problems(text, tmp_path)
    assert [l.split(": ")[1] for l in lines] == ["container.shm_size", "labels", "timeout"]


@pytest.mark.parametrize("depth, where", [(100, "bomb.yaml:2:"), (5000, "bomb.yaml:2:")])
def test_deep_nesting_is_a_located_error_not_a_recursion_error(depth, where):
    text = "apiVersion: runner/v1\nlabels: " + "[" * depth + "]" * depth + "\n"
    with pytest.raises(SpecError, match="nested") as exc:
        load_spec_text(text, "bomb.yaml")
    assert where in str(exc.value)


def test_validation_messages_say_what_is_allowed_one_line_per_field(tmp_path):
    """pydantic's wording is rewritten at the one boundary: what is allowed and what was given, no union noise."""
    text = MINIMAL.lstrip("\n") + "  env: [FOO=bar]\nstop_at: {steps: -5}\ntimeout: 0\nguards:\n  - {stall: 0}\n"
    lines, f = problems(text, tmp_path)
    assert lines == [
        f"{f}:7:8: container.env: a mapping NAME: value (e.g. env: {{PYTHONUNBUFFERED: 1}}), not a list of NAME=value",
        f"{f}:8:18: stop_at.steps: should be at least 1, got -5",
        f"{f}:9:10: timeout: a timeout of 0 would fail the phase at once: give a duration such as 3h, or leave it out",
        f"{f}:11:13: guards[0].stall: should be more than 0, got 0",
    ], lines


@pytest.mark.parametrize("tagged", ["!!python/object/apply:os.system [echo hi]", "!!python/tuple [a, b]",
                                    "!!set {a: null}", "!!python/object/new:dict {x: 1}"])
def test_yaml_tags_on_lists_and_mappings_are_refused_like_tags_on_scalars(tmp_path, tagged):
    text = MINIMAL.lstrip("\n").replace('command: [python3, -c, "print(\'hi\')"]', f"command: {tagged}")
    lines, f = problems(text, tmp_path)
    assert len(lines) == 1 and lines[0].startswith(f"{f}:6:12: container.command: unsupported YAML tag '"), lines
    assert lines[0].endswith("specs hold plain data only")

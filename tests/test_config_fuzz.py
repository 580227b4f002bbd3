"""Bad `--set` values, fuzzed over every configuration field: a wrong type, an out-of-range value or an
empty string ends `torchrl-rssm train` with exit code 2 and one line on stderr naming the field and
what it expects, before anything is built (no environment, no run folder).

The fields come from the configuration dataclasses (a new section's fields are fuzzed too); the
type of bad value comes from each field's type hint, the range from its declared check.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import shutil
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchrl_rssm.cli import main
from torchrl_rssm.recipes.config import (
    AGENT_SECTIONS,
    PRESETS,
    Check,
    RunConfig,
    apply_overrides,
    field_checks,
    preset,
    presets_by_agent,
)

FIELDS = [f.name for f in dataclasses.fields(RunConfig)]
CHECKS = field_checks(RunConfig)
HINTS = typing.get_type_hints(RunConfig)
BOOL_WORDS = {"1", "true", "yes", "on", "0", "false", "no", "off"}
NONE_WORDS = {"none", "null"}


def _owners(name: str) -> list[str]:
    """The agents whose own sections hold ``name`` (none: a field every agent shares)."""
    return [algo for algo, section in AGENT_SECTIONS.items() if name in {f.name for f in dataclasses.fields(section)}]


def _owner(name: str) -> str | None:
    return next(iter(_owners(name)), None)


def _tiny(algo: str) -> str:
    """The agent's smallest preset (the tests' own, e.g. ``tiny``, ``dreamer-tiny``)."""
    names = [n for n in presets_by_agent()[algo] if "tiny" in n]
    assert names, f"agent {algo!r} has no tiny preset to fuzz its fields with"
    return names[0]


def _preset_for(name: str) -> str:
    return _tiny(_owner(name) or "planet")


def _kind(name: str) -> tuple[type, bool]:
    """The field's type from its type hint (independent of its check): ``(int, True)`` for ``int | None``."""
    hint = HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return (args[0] if args else hint), type(None) in typing.get_args(hint)


def _parses(cast, text: str) -> bool:
    try:
        cast(text.strip())
    except ValueError:
        return False
    return True


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


# JSON values of the wrong shape: what a user pastes into the wrong field
JSON_LISTS = st.lists(st.integers(-5, 5), max_size=3).map(json.dumps)
JSON_DICTS = st.dictionaries(st.sampled_from("abc"), st.integers(-5, 5), max_size=2).map(json.dumps)
EMPTY = st.sampled_from(["", " ", "\t"])


def bad_values(name: str) -> st.SearchStrategy[str]:
    """``--set`` texts that ``name`` must refuse: wrong type, out of range, empty."""
    kind, optional = _kind(name)
    check: Check = CHECKS[name]
    cfg = preset(_preset_for(name))
    low, high = check.bounds(cfg)
    words = NONE_WORDS if optional else set()
    choices = [EMPTY]
    if kind is int:
        choices += [st.text().filter(lambda t: not _parses(int, t) and t.strip().lower() not in words),
                    st.floats(allow_nan=False).filter(lambda x: not float(x).is_integer()).map(repr),
                    JSON_LISTS, JSON_DICTS, st.sampled_from(["true", "1e3", "3.0"])]
        if low is not None:  # the first value out, and any below
            choices.append(st.just(math.ceil(low) - 1) | st.integers(max_value=math.ceil(low) - 1))
        if high is not None:
            choices.append(st.just(math.floor(high) + 1) | st.integers(min_value=math.floor(high) + 1))
    elif kind is float:  # every float must be finite
        choices += [st.text().filter(lambda t: not _parses(float, t) and t.strip().lower() not in words),
                    JSON_LISTS, JSON_DICTS, st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity", "1e999"])]
        finite = {"allow_nan": False, "allow_infinity": False}
        if low is not None:  # just below the bound, and anything below (-0.0 is not below 0)
            choices.append(st.just(math.nextafter(low, -math.inf))
                           | st.floats(max_value=low, **finite).filter(lambda x: x < low))
        if high is not None:
            choices.append(st.just(math.nextafter(high, math.inf))
                           | st.floats(min_value=high, **finite).filter(lambda x: x > high))
        if check.above is not None:  # the bound itself, and anything below
            choices.append(st.just(check.above) | st.floats(max_value=check.above, **finite))
    elif kind is bool:
        choices += [st.text().filter(lambda t: t.strip().lower() not in BOOL_WORDS),
                    st.integers().filter(lambda i: i not in (0, 1)).map(str), JSON_LISTS]
    elif kind is dict:
        choices += [st.text().filter(lambda t: not _json_object(t) and t.strip().lower() not in words),
                    JSON_LISTS, st.integers().map(str), st.just('"continuous"')]
    elif kind is str:
        options = check.options()
        if options is not None:  # one of a few names: anything else
            choices += [st.text().filter(lambda t: t.strip() not in options), JSON_LISTS, JSON_DICTS]
        elif check.test is not None:  # a name that is looked up (a task, a device): lists and dicts are none
            choices += [JSON_LISTS, JSON_DICTS]
    else:
        raise AssertionError(f"field {name!r}: no fuzzing for its type {HINTS[name]}")
    return st.one_of(*choices).map(str if kind is int else lambda v: v if isinstance(v, str) else repr(v))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """An empty working directory: nothing may appear in it (the default logdir is relative)."""
    path = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        yield path


def _train(argv: list[str]) -> tuple[int, str, str]:
    """``torchrl-rssm train`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["train", *argv])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def _assert_one_line_error(workdir, argv: list[str], name: str, expect: str = "expected") -> str:
    logdir = workdir / "run"
    try:
        code, out, err = _train([*argv, "--logdir", str(logdir), "--no-progress"])
        made = sorted(p.name for p in workdir.iterdir())
    finally:  # a run that started anyway must not fail the next examples too
        for path in workdir.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    lines = err.splitlines()
    assert code == 2, (argv, code, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, (argv, err[-2000:])
    assert lines[0].startswith("torchrl-rssm: error: ") and name in lines[0] and expect in lines[0], (argv, lines)
    assert out == ""
    assert made == [], (argv, made)  # no run folder (--logdir or a default one)
    return lines[0]


@pytest.mark.parametrize("name", FIELDS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.filter_too_much])
@given(data=st.data())
def test_every_field_refuses_bad_values_in_one_line(workdir, name, data):
    text = data.draw(bad_values(name), label=f"--set {name}=")
    line = _assert_one_line_error(workdir, ["--preset", _preset_for(name), f"--set={name}={text}"], name)
    assert f"{name}=" in line  # the field and the value it was given


def _edges(name: str) -> list[str]:
    """The first values out of ``name``'s range, and the empty string."""
    kind, _ = _kind(name)
    check = CHECKS[name]
    low, high = check.bounds(preset(_preset_for(name)))
    step = (lambda x, d: x + d) if kind is int else (lambda x, d: math.nextafter(x, d * math.inf))
    edges = [step(low, -1)] if low is not None else []
    edges += [step(high, 1)] if high is not None else []
    edges += [check.above] if check.above is not None else []
    edges += ["nan", "inf"] if kind is float else []
    return ["", *(e if isinstance(e, str) else str(e) if kind is int else repr(e) for e in edges)]


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_refuses_the_first_value_out_of_range(workdir, name):
    for text in _edges(name):
        line = _assert_one_line_error(workdir, ["--preset", _preset_for(name), f"--set={name}={text}"], name)
        assert f"{name}=" in line


@pytest.mark.parametrize("name", [n for n in FIELDS if _owner(n) is not None])
def test_a_field_of_another_agent_is_refused_in_one_line(workdir, name):
    """Even with a value that is right for its own agent."""
    value = getattr(preset(_preset_for(name)), name)
    for algo in AGENT_SECTIONS:
        if algo not in _owners(name):
            _assert_one_line_error(workdir, ["--preset", _tiny(algo), f"--set={name}={value}"], name,
                                   expect="another agent")


@pytest.mark.parametrize("flag, value, name", [("--seed", "-5", "seed"), ("--episodes", "-1", "episodes"),
                                               ("--num-envs", "0", "num_envs"), ("--train-ratio", "nan", "train_ratio"),
                                               ("--device", "", "device"), ("--env", "dmc:nope-nope", "env")])
def test_flags_are_checked_like_their_fields(workdir, flag, value, name):
    _assert_one_line_error(workdir, ["--preset", "tiny", f"{flag}={value}"], name)


def test_every_preset_and_the_defaults_pass_their_checks():
    """The checks refuse nothing a preset or a default sets (no default changed to pass them)."""
    RunConfig().validate()
    for name in PRESETS:
        preset(name).validate()
    cfg = apply_overrides(preset("tiny"), ["kl_balance=null", "train_ratio=0.5", "env_kwargs={}", "top_k=16",
                                           "chunk_length=20", "buffer_capacity=none", "from_pixels=off"])
    assert (cfg.kl_balance, cfg.train_ratio, cfg.env_kwargs, cfg.buffer_capacity, cfg.from_pixels) == \
        (None, 0.5, {}, None, False)


def test_every_field_declares_what_it_accepts():
    """Each field carries a check of its type hint's kind; every number has a declared range."""
    for f in dataclasses.fields(RunConfig):
        check = f.metadata.get("check")
        assert isinstance(check, Check), f"field {f.name!r}: add metadata['check'] (what it accepts)"
        kind, optional = _kind(f.name)
        assert (check.kind, check.optional) == (kind, optional), f.name
        if kind in (int, float):
            assert check.low is not None or check.above is not None, f"field {f.name!r}: declare its range"
    # sizes, rates and probabilities: the ranges a reader expects
    for name in FIELDS:
        check = CHECKS[name]
        if name.endswith(("_dim", "_size", "_lr")) or name in ("batch_size", "chunk_length", "num_candidates"):
            low, _ = check.bounds(preset("tiny"))
            assert (low is not None and low >= 1) or check.above == 0, name
    assert CHECKS["gamma"].bounds() == (0, 1) and CHECKS["lmbda"].bounds() == (0, 1)


def test_a_field_without_a_check_is_checked_by_its_type():
    """A new section's field that declares no check still refuses values of the wrong type."""
    @dataclasses.dataclass
    class NewSection:
        steps: int = 3
        scale: float | None = None

    checks = field_checks(NewSection)
    assert checks["steps"] == Check(int) and checks["scale"] == Check(float, optional=True)
    with pytest.raises(ValueError, match=r"^steps='x': expected an integer\.$"):
        checks["steps"].parse("steps", "x")
    with pytest.raises(ValueError, match=r"^scale=inf: expected a finite number or None\.$"):
        checks["scale"].check("scale", float("inf"))

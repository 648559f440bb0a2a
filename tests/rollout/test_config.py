"""The rollout file and admin body: parsing, checking, and the file poller's live apply (a bad
file keeps the previous rollouts), over a real Registry and the scripted fake loader."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import orjson
import pytest

from app.errors import ConfigError, InvalidArgument
from app.rollout.config import parse_body, parse_document, read_file, to_rollout
from app.rollout.source import RolloutFileSource
from app.rollout.spec import Phase
from app.rollout.table import RolloutTable
from tests.fakes import Driver, ScriptedLoader, model, until

ENTRY = {
    "stable": 1,
    "canary": 2,
    "canary_percent": 5,
    "shadow_percent": 10,
    "steps": [5, 25, 100],
    "step_seconds": 30,
    "window_seconds": 20,
    "automatic": False,
    "thresholds": {"max_error_rate_increase": 0.02, "max_abs_diff": 0.5},
}


def test_an_entry_becomes_a_rollout_with_fractions() -> None:
    parsed = parse_document(
        {"models": {"m": {"rollout": ENTRY, "policy": {"on_publish": "shadow"}}}}
    )
    r = to_rollout("m", parsed.rollouts["m"], 1, 2)
    assert (r.stable, r.canary, r.weight, r.shadow) == (1, 2, 0.05, 0.1)
    assert r.steps == (0.05, 0.25, 1.0) and (r.step_seconds, r.window_seconds) == (30, 20)
    assert r.phase is Phase.CANARY and not r.automatic
    assert r.thresholds.max_error_rate_increase == 0.02 and r.thresholds.max_abs_diff == 0.5
    assert r.thresholds.max_p99_ratio == 1.5  # defaults kept
    assert parsed.policies["m"].on_publish == "shadow"


def test_zero_percent_starts_in_shadow_and_labels_stay_strings() -> None:
    body = parse_body({"canary": "candidate"})
    assert body.canary == "candidate" and body.stable is None
    assert to_rollout("m", body, 1, 2).phase is Phase.SHADOW


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"canary": 2, "canary_percent": 101}, "canary_percent: Input should be less than"),
        ({"canary": 2, "canary_pct": 5}, "canary_pct: Extra inputs are not permitted"),
        ({"canary_percent": 5}, "canary: Field required"),
        ({"canary": True}, "canary"),
        ({"canary": 2, "phase": "done"}, "phase: Input should be"),
    ],
)
def test_bad_bodies_say_where(entry: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        parse_body(entry)


def test_files_json_and_toml(tmp_path: Path) -> None:
    j = tmp_path / "rollouts.json"
    j.write_bytes(orjson.dumps({"models": {"m": {"rollout": ENTRY}}}))
    t = tmp_path / "rollouts.toml"
    t.write_text(
        "[models.m.rollout]\nstable = 1\ncanary = 2\ncanary_percent = 5\nshadow_percent = 10\n"
        "steps = [5, 25, 100]\nstep_seconds = 30\nwindow_seconds = 20\nautomatic = false\n"
        "[models.m.rollout.thresholds]\nmax_error_rate_increase = 0.02\nmax_abs_diff = 0.5\n"
    )
    assert read_file(j).rollouts == read_file(t).rollouts
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="does not parse"):
        read_file(bad)
    with pytest.raises(ConfigError, match="Cannot read rollout file"):
        read_file(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match=r"models\.m\.rollout\.canary_percent"):
        parse_document({"models": {"m": {"rollout": {"canary": 2, "canary_percent": -1}}}})


async def test_the_file_applies_live_and_a_bad_file_keeps_the_previous_rollouts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rollouts.json"

    def write(doc: object) -> None:
        path.write_bytes(orjson.dumps(doc) if not isinstance(doc, str) else doc.encode())

    async with Driver(ScriptedLoader()).running() as d:
        d.set_models(model())
        table = RolloutTable(lambda: d.registry)
        source = RolloutFileSource(path, table, 0.05)
        write({"models": {"m": {"rollout": {"stable": 1, "canary": 2, "canary_percent": 20}}}})
        await source.read_once()  # no scan yet: version 1 unknown, tried again later
        assert table.get("m") is None
        await d.offer("m", 1, 2)
        await source.read_once()
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "AVAILABLE"})
        r = table.get("m")
        assert r is not None and (r.stable, r.canary, r.weight) == (1, 2, 0.2)

        table.set_weight("m", 0.5, "controller step")  # the file does not reset it ...
        await source.read_once()
        assert table.get("m").weight == 0.5  # type: ignore[union-attr]
        write({"models": {"m": {"rollout": {"stable": 1, "canary": 2, "canary_percent": 25}}}})
        await source.read_once()  # ... until its entry changes
        assert table.get("m").weight == 0.25  # type: ignore[union-attr]

        caplog.set_level(logging.ERROR, "app.rollout.source")
        write("{broken")
        await source.read_once()
        await source.read_once()
        assert table.get("m").weight == 0.25  # type: ignore[union-attr]
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "keeping the previous rollouts" in errors[0]

        write({"models": {"m": {"rollout": {"stable": 1, "canary": 2, "phase": "rolled_back"}}}})
        await source.read_once()
        r = table.get("m")
        assert r is not None and r.phase is Phase.ROLLED_BACK and r.reason == "rolled back by file"
        await until(lambda: d.states("m") == {2: "END", 1: "AVAILABLE"})

        write({"models": {}})  # the entry removed: the table forgets the rollout
        await source.read_once()
        assert table.get("m") is None


def test_the_readme_example_parses() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("```toml\n# rollouts.toml") + len("```toml\n")
    text = readme[start : readme.index("```", start)]
    parsed = parse_document(tomllib.loads(text))
    body = parsed.rollouts["half_plus_two"]
    assert (body.stable, body.canary, body.canary_percent, body.automatic) == (1, 2, 5, False)
    assert parsed.policies["half_plus_two"].on_publish == "immediate"

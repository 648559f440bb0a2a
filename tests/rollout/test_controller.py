"""The controller's pure parts (app.rollout.controller): the step walk and the publish template.
Its decisions on a real server: tests/rollout/test_automatic.py."""

from __future__ import annotations

from app.rollout.controller import from_template, next_step
from app.rollout.spec import Phase, Policy, Rollout


def test_steps_walk_from_shadow_to_promotion() -> None:
    r = Rollout("m", 1, 2, phase=Phase.SHADOW, steps=(0.05, 0.25, 0.5, 1.0))
    walked = []
    step = next_step(r)
    while step is not None:
        walked.append(step)
        r = Rollout("m", 1, 2, weight=step, phase=Phase.CANARY, steps=r.steps)
        step = next_step(r)
    assert walked == [0.05, 0.25, 0.5, 1.0]  # then None: promote
    # an operator's weight between steps goes on to the next step above it
    assert next_step(Rollout("m", 1, 2, weight=0.3, steps=(0.05, 0.25, 0.5, 1.0))) == 0.5


def test_publish_templates() -> None:
    template = Rollout("m", 0, 0, steps=(0.1, 1.0), step_seconds=5, shadow=0.0)
    shadow = from_template(Policy("m", "shadow", template), stable=3, canary=4)
    assert (shadow.stable, shadow.canary, shadow.phase, shadow.weight) == (3, 4, Phase.SHADOW, 0)
    assert shadow.shadow == 1.0 and shadow.step_seconds == 5  # mirrors everything by default
    canary = from_template(Policy("m", "rollout", template), stable=3, canary=4)
    assert (canary.phase, canary.weight, canary.shadow) == (Phase.CANARY, 0.1, 0.0)
    assert "version 4 published" in canary.reason
    bare = from_template(Policy("m", "rollout"), stable=1, canary=2)
    assert bare.weight == Rollout("m", 1, 2).steps[0]

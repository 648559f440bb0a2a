"""A large request is decoded off the event loop: a small request sent while it is being decoded
is answered before the large one even reaches the model (issue 7, section 4).

Real uvicorn on a socket (`threaded_server`), a fake model injected through `create_app`. The
order is observed, not timed: a test-side ASGI wrapper reports when the server has received the
whole large body (decoding starts right after, with no await in between on the loop path), and
the fake model records whether the small answer had already arrived when the large request
reached it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.api.codec import _asarray
from app.core.servable import Example
from app.core.types import Signature, TensorSpec
from app.main import create_app
from app.settings import Settings
from tests.harness import threaded_server, wait_all_available

SIGNATURES = {
    "serving_default": Signature(
        name="serving_default",
        method_name="tensorflow/serving/predict",
        inputs={"s": TensorSpec("s", "DT_STRING", (-1,), "s:0")},
        outputs={"n": TensorSpec("n", "DT_INT64", (-1,), "n:0")},
    )
}
BIG_ROWS = 400_000  # DT_STRING elements are converted one by one: seconds of decoding


class CountingServable:
    """n = [number of strings]; notes whether the small answer was out when the big one came."""

    def __init__(self) -> None:
        self.small_answered = threading.Event()
        self.big_reached_model = threading.Event()
        self.small_was_answered_first: bool | None = None

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return SIGNATURES

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        strings = inputs["s"]
        if len(strings) > 1:
            self.small_was_answered_first = self.small_answered.is_set()
            self.big_reached_model.set()
        return {"n": np.array([len(strings)], dtype=np.int64)}

    def metadata(self) -> dict[str, Any]:
        return {"signature_def": {"signature_def": {}}}

    def serialize_examples(
        self, context: Example | None, examples: Sequence[Example]
    ) -> np.ndarray:
        raise NotImplementedError

    def warmup(self, iterations: int) -> int:
        return 0

    def unload(self) -> None:
        return None


class CountingLoader:
    def __init__(self) -> None:
        self.servable = CountingServable()

    def load(self, path: Path) -> CountingServable:
        return self.servable


class BodyReceived:
    """ASGI wrapper: sets `event` once the request marked `x-big` has been received in full."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.event = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (b"x-big", b"1") not in scope["headers"]:
            await self.app(scope, receive, send)
            return

        async def watched() -> Any:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                self.event.set()
            return message

        await self.app(scope, watched, send)

    def __getattr__(self, name: str) -> Any:  # threaded_server reads the app's attributes
        return getattr(self.app, name)


def test_small_request_is_answered_while_a_big_one_is_decoded(tmp_path: Path) -> None:
    base = tmp_path / "m"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"fake")
    loader = CountingLoader()
    app = create_app(Settings(model_name="m", model_base_path=str(base)), loader=loader)
    wrapped = BodyReceived(app)
    big = httpx.Request(
        "POST",
        "http://x/v1/models/m:predict",
        json={"inputs": {"s": [f"row{i}" for i in range(BIG_ROWS)]}},
    ).content
    with threaded_server(wrapped) as url:  # type: ignore[arg-type]
        # The version loads once its folder settled: until then both requests wait for it, and
        # the big one, decoded by then, could reach the model first (seen on a busy machine).
        wait_all_available(url, {"m": 1})
        big_answer: list[httpx.Response] = []

        def send_big() -> None:
            big_answer.append(
                httpx.post(
                    f"{url}/v1/models/m:predict", content=big, headers={"x-big": "1"}, timeout=120
                )
            )

        sender = threading.Thread(target=send_big)
        sender.start()
        try:
            assert wrapped.event.wait(60), "the big body never arrived"
            small = httpx.post(
                f"{url}/v1/models/m:predict", json={"inputs": {"s": ["a"]}}, timeout=120
            )
            loader.servable.small_answered.set()
        finally:
            sender.join(120)
    assert small.status_code == 200 and small.json() == {"outputs": [1]}
    assert big_answer and big_answer[0].json() == {"outputs": [BIG_ROWS]}
    # The small request went through while the big one was still being decoded.
    assert loader.servable.small_was_answered_first is True


@pytest.mark.parametrize(
    "value",
    [
        [1.0] * 3000,
        [[1, 2]] * 3000,
        [[1, 2]] * 2000 + [[1.5, 2]] * 2000,  # dtype changes between blocks
        [1] * 2047 + [2**63] + [1] * 2000,
        [[1]] * 2100 + [[1, 2]] * 2000,  # ragged across blocks
        [True] * 2048 + [1] * 2048,
        ["a"] * 2048 + ["bb"] * 2048,
        [[[]]] * 5000,
    ],
)
def test_block_conversion_is_what_numpy_gives(value: list[Any]) -> None:
    """Long lists become arrays block by block (GIL switch points); the result is numpy's."""
    try:
        whole = np.asarray(value)
    except ValueError:
        with pytest.raises(ValueError):
            _asarray(value)
        return
    blocks = _asarray(value)
    assert blocks.dtype == whole.dtype and blocks.shape == whole.shape
    assert (blocks == whole).all()

"""The two C-library decoders TF Serving's REST edge relies on, reproduced rule for rule.

- `base64_unescape`: absl's `Base64Unescape` (absl/strings/escaping.cc), which TF Serving's
  `JsonDecodeBase64Object` (util/json_tensor.cc) applies to every `{"b64": ...}` value: row,
  columnar and classify/regress features alike.
- `percent_unescape`: curl's `curl_easy_unescape`, which TF Serving's `DecodeArg`
  (model_servers/http_rest_api_util.cc) applies to the model name and version label after the
  route grammar matched the still-encoded path.

Pure functions, no shared state: any thread may call them.
"""

from __future__ import annotations

import binascii
import re

# absl::ascii_isspace: exactly these six ASCII bytes (not str.isspace's Unicode set, which also
# counts \x1c-\x1f and would accept what absl refuses).
_ABSL_SPACE = " \t\n\v\f\r"
_DROP_SPACE = str.maketrans("", "", _ABSL_SPACE)
# After whitespace is gone: data characters of the standard alphabet, then only pad characters
# ('=' or absl's '.'). Web-safe '-' and '_', NUL and anything else fail the match.
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*")
_PADS_RE = re.compile(r"[=.]*")


def base64_unescape(text: str) -> bytes | None:
    """Decode standard base64 exactly as absl's Base64Unescape; None where absl returns false.

    absl's rules: ASCII whitespace is skipped anywhere; padding may be omitted; '.' counts as a
    pad character like '='; pads may only end the input, and there must be none or exactly as
    many as the last group needs (a whole last group takes none); a last group of one character
    is an error; unused low bits of the last character are ignored (not required to be zero).
    """
    if not text.isascii():
        return None
    compact = text.translate(_DROP_SPACE) if _has_space(text) else text
    data = _BASE64_RE.match(compact)
    assert data is not None  # `*` always matches
    n = data.end()
    if n != len(compact) and _PADS_RE.fullmatch(compact, n) is None:
        return None
    pads, rest = len(compact) - n, n % 4
    if rest == 1 or (pads and pads != (4 - rest) % 4):
        return None
    try:
        # Non-strict a2b ignores the unused low bits, as absl does.
        return binascii.a2b_base64(compact[:n] + "=" * (-n % 4))
    except binascii.Error:  # pragma: no cover - the checks above leave nothing it refuses
        return None


def _has_space(text: str) -> bool:
    return any(c in text for c in _ABSL_SPACE)


_ESCAPE_RE = re.compile(rb"%([0-9A-Fa-f]{2})")


def percent_unescape(raw: bytes) -> bytes:
    """Decode %XX escapes exactly as curl_easy_unescape: each '%' followed by two hex digits
    becomes that byte (%00 included); a '%' without two hex digits after it stays as it is;
    '+' stays '+' (it means space only in form bodies, which curl does not decode here)."""
    if b"%" not in raw:
        return raw
    return _ESCAPE_RE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)

"""One Prometheus exposition from several processes' (`--workers N`).

Each worker keeps its own collectors (custom ones reading core's counters, which
prometheus-client's multiprocess mode cannot share: it only aggregates its own value classes
through mmapped files). So the scraped worker gathers every worker's text exposition and merges
them here: counter, histogram, summary and untyped samples with the same name and labels are
summed (`*_created` takes the earliest); gauge samples are kept per worker, with a `worker`
label added, since summing a state or a size across processes rarely means anything.
Pure functions; any thread.
"""

from __future__ import annotations

import re

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?")
_TYPE = re.compile(r"# TYPE (\S+) (\S+)")


def _family(sample: str, types: dict[str, str]) -> str | None:
    """The family a sample name belongs to (the longest TYPE'd name it extends)."""
    for cut in (
        sample,
        *(
            sample[: -len(s)]
            for s in ("_total", "_created", "_bucket", "_sum", "_count", "_gsum", "_gcount")
            if sample.endswith(s)
        ),
    ):
        if cut in types:
            return cut
    return None


def merge_expositions(texts: dict[int, str]) -> bytes:
    """Merge text expositions keyed by worker index into one (families in first-seen order)."""
    headers: dict[str, list[str]] = {}
    types: dict[str, str] = {}
    values: dict[str, dict[tuple[str, str], float]] = {}
    for worker, text in sorted(texts.items()):
        for line in text.splitlines():
            if line.startswith("#"):
                match = _TYPE.match(line)
                if match:
                    types.setdefault(match.group(1), match.group(2))
                name = line.split(" ")[2] if line.count(" ") >= 2 else ""
                if name and line not in headers.setdefault(name, []):
                    headers[name].append(line)
                continue
            match = _SAMPLE.fullmatch(line.strip())
            if match is None:
                continue
            name, labels, raw = match.group(1), match.group(2) or "", match.group(3)
            family = _family(name, types) or name
            kind = types.get(family, "untyped")
            if kind == "gauge":
                tag = f'worker="{worker}"'
                labels = f"{{{labels[1:-1]},{tag}}}" if len(labels) > 2 else f"{{{tag}}}"
            samples = values.setdefault(family, {})
            value = float(raw)
            key = (name, labels)
            if key not in samples or kind == "gauge":
                samples[key] = value
            elif name.endswith("_created"):
                samples[key] = min(samples[key], value)
            else:
                samples[key] += value
    out: list[str] = []
    for family in dict.fromkeys([*headers, *values]):
        out += headers.get(family, [])
        out += [
            f"{name}{labels} {_number(v)}" for (name, labels), v in values.get(family, {}).items()
        ]
    return ("\n".join(out) + "\n").encode()


def _number(value: float) -> str:
    return str(int(value)) + ".0" if value.is_integer() and abs(value) < 2**53 else repr(value)

"""Redaction cost per size of one string: :func:`cordon.audit.ledger.redact_text` on texts shaped to
hit each of its patterns' worst case (issue 10, item 5: the patterns once cost about 17 s per MB of
one field, a 9.8 MB ``userAgent`` 158 s; intake now caps one field at
:data:`cordon.detections.intake.MAX_FIELD_CHARS`, and the patterns must stay linear above it too).

For each shape and size, ``--repeat`` timings; prints p50 / p95 in milliseconds and the p50 per MiB
(a linear cost keeps ms/MiB flat as the size grows, a quadratic one grows with it). ``--json``
prints the same figures as one JSON object. Asserts nothing.

    .venv/bin/python benchmarks/bench_redaction.py [--sizes 65536,1048576] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from cordon.audit.ledger import redact_text

#: Repeated units, each aimed at one pattern's backtracking (or at none: ``user-agent``).
SHAPES = {
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) ",
    "dotted-words": "a.",  # URL scheme ``[a-z][a-z0-9+.-]*`` from every word boundary
    "letters": "a",  # ``key=`` tried at every position of one long word
    "jwt-like": "eyJabc.",
    "key-values": "a=1&",
    "quoted-secret": 'password="',
    "url-userinfo": "x://a:",
    "bearer": "bearer ",
    "pem-header": "-----BEGIN RSA PRIVATE KEY-----",
}


def _text(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="65536,1048576", help="comma-separated sizes in characters")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, unit in SHAPES.items():
        for size in sizes:
            text = _text(unit, size)
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                redact_text(text)
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            p50 = statistics.median(times)
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            out.setdefault(name, {})[str(size)] = {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2),
                                                  "ms_per_mib": round(p50 * (1 << 20) / size, 1)}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'shape':<15} {'chars':>9} {'p50 ms':>9} {'p95 ms':>9} {'ms/MiB':>9}")
    for name, by_size in out.items():
        for size, f in by_size.items():
            print(f"{name:<15} {size:>9} {f['p50_ms']:>9} {f['p95_ms']:>9} {f['ms_per_mib']:>9}")


if __name__ == "__main__":
    main()

"""Parses a Bettong /metrics scrape (read from stdin) with the reference Prometheus parsers.

The integration test `observability::metrics_validate_against_the_prometheus_parsers` runs it:
it parses the text with prometheus_client's OpenMetrics parser (the format served) and with its
classic Prometheus text parser (what older scrapers read), fails (exit 1, the parser's error on
stderr) if either rejects it, and prints every family as JSON on stdout:
{"families": {name: {"type": ..., "unit": ..., "samples": [[name, labels, value], ...]}}}.
Exit 2 means the prometheus_client package is missing (`python3 -m pip install prometheus-client`).
"""

import json
import sys

try:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as parse_openmetrics,
    )
    from prometheus_client.parser import text_string_to_metric_families as parse_prometheus
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"prometheus_client is not installed ({e}): python3 -m pip install prometheus-client",
          file=sys.stderr)
    sys.exit(2)


def main() -> int:
    text = sys.stdin.read()
    families = {}
    try:
        for f in parse_openmetrics(text):
            families[f.name] = {
                "type": f.type,
                "unit": f.unit,
                "samples": [[s.name, s.labels, s.value] for s in f.samples],
            }
        # The classic parser does not know `# EOF` or `# UNIT`, which are comments to it.
        classic = {f.name for f in parse_prometheus(text)}
    except Exception as e:  # the parsers raise ValueError and others on bad input
        print(f"the metrics do not parse: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    missing = set(families) - classic
    if missing:
        print(f"the classic parser lost families: {sorted(missing)}", file=sys.stderr)
        return 1
    json.dump({"families": families}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

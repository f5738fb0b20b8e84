"""The peer side of `make bench-peers`: dlt's REST API source loading one simulated account into
PostgreSQL with a merge load, as a dlt user would configure it. Runs in its own virtual environment
(`.venv-peers`, dlt[postgres] from PyPI), never in apptsync's: dlt is not a dependency of the product.

    .venv-peers/bin/python benchmarks/peers/dlt_pipeline.py --provider calendly --base-url URL \
        --access-token T --organization URI --window-start ISO --window-end ISO \
        --database-url postgresql://user@127.0.0.1:PORT/db --dataset NAME --pipelines-dir DIR

- Calendly: `scheduled_events` of the organization inside the window (`count=100`, the page token of
  `pagination.next_page_token`), and for each event its `invitees` (a child resource, the event's
  uuid from its `uri`); both merged on `uri`.
- Acuity: `appointments` (`showall=true`: canceled ones too) between the window's days in one request
  (`max` = the whole account: Acuity has no offset to page with); merged on `id`.

The same pipeline name and directory make a re-run a re-run (dlt's state is kept); a new dataset
and directory make a first load. Prints one JSON line: `wall_seconds` of `pipeline.run` (extract,
normalize, load), `cpu_seconds` of this process over that call, and the rows dlt normalized per table.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import dlt
from dlt.sources.rest_api import rest_api_source


def event_uuid(event: dict[str, Any]) -> dict[str, Any]:
    """The child resource needs the event's uuid; Calendly gives only its `uri` (…/scheduled_events/UUID)."""
    event["uuid"] = str(event["uri"]).rsplit("/", 1)[-1]
    return event


def calendly_source(args: argparse.Namespace) -> Any:
    return rest_api_source({
        "client": {
            "base_url": args.base_url.rstrip("/") + "/",
            "auth": {"type": "bearer", "token": args.access_token},
        },
        "resource_defaults": {"write_disposition": "merge", "primary_key": "uri"},
        "resources": [
            {
                "name": "scheduled_events",
                "endpoint": {
                    "path": "scheduled_events",
                    "params": {"organization": args.organization, "count": 100,
                               "min_start_time": args.window_start, "max_start_time": args.window_end},
                    "paginator": {"type": "cursor", "cursor_path": "pagination.next_page_token",
                                  "cursor_param": "page_token"},
                    "data_selector": "collection",
                },
                "processing_steps": [{"map": event_uuid}],
            },
            {
                "name": "invitees",
                "endpoint": {
                    "path": "scheduled_events/{resources.scheduled_events.uuid}/invitees",
                    "params": {"count": 100},
                    "paginator": {"type": "cursor", "cursor_path": "pagination.next_page_token",
                                  "cursor_param": "page_token"},
                    "data_selector": "collection",
                },
            },
        ],
    })  # fmt: skip


def acuity_source(args: argparse.Namespace) -> Any:
    return rest_api_source({
        "client": {
            "base_url": args.base_url.rstrip("/") + "/",
            "auth": {"type": "http_basic", "username": args.user_id, "password": args.api_key},
        },
        "resource_defaults": {"write_disposition": "merge", "primary_key": "id"},
        "resources": [
            {
                "name": "appointments",
                "endpoint": {
                    "path": "appointments",
                    "params": {"minDate": args.window_start[:10], "maxDate": args.window_end[:10],
                               "showall": "true", "max": args.acuity_max},
                    "paginator": "single_page",
                },
            },
        ],
    })  # fmt: skip


def process_cpu_seconds() -> float:
    """User + system CPU of this process (all its threads) and of any child it waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", choices=["calendly", "acuity"], required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--access-token", default="")
    parser.add_argument("--organization", default="")
    parser.add_argument("--user-id", default="")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--acuity-max", type=int, default=1_000_000)
    parser.add_argument("--window-start", required=True, help="ISO 8601 instant")
    parser.add_argument("--window-end", required=True, help="ISO 8601 instant")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--pipelines-dir", required=True)
    args = parser.parse_args()

    source = calendly_source(args) if args.provider == "calendly" else acuity_source(args)
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{args.provider}",
        pipelines_dir=args.pipelines_dir,
        destination=dlt.destinations.postgres(credentials=args.database_url),
        dataset_name=args.dataset,
    )
    before = process_cpu_seconds()
    started = time.perf_counter()
    info = pipeline.run(source)
    wall_seconds = time.perf_counter() - started
    cpu_seconds = process_cpu_seconds() - before
    info.raise_on_failed_jobs()
    trace = pipeline.last_trace
    row_counts = dict(trace.last_normalize_info.row_counts) if trace and trace.last_normalize_info else {}
    print(json.dumps({"wall_seconds": round(wall_seconds, 4), "cpu_seconds": round(cpu_seconds, 3),
                      "row_counts": row_counts, "dlt_version": dlt.__version__}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

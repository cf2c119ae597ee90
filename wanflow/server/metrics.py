"""``/metrics`` in Prometheus' text format: jobs by status, and per model and worker the queue depth, the running jobs,
the run times of finished jobs, lease expiries and the live workers, all read from the store (the same on every API
server of a shared queue)."""

from __future__ import annotations

from wanflow.server.store import JobStore


def metrics_text(store: JobStore) -> str:
    counts = store.counts()
    total, count = store.generation_seconds()
    rows = store.metrics()
    lines = gauge("wanflow_jobs", "Jobs by status.", [({"status": s}, n) for s, n in counts.items()])
    lines += gauge("wanflow_queue_length", "Jobs waiting to run.", [({}, counts["queued"])])
    lines += [
        "# HELP wanflow_generation_seconds Run time of the jobs that finished.",
        "# TYPE wanflow_generation_seconds summary",
        f"wanflow_generation_seconds_sum {total:.3f}",
        f"wanflow_generation_seconds_count {count}",
    ]
    lines += gauge("wanflow_model_queue_length", "Jobs waiting, per model.", by(rows["queued"], "model"))
    lines += gauge("wanflow_running_jobs", "Jobs running, per worker and model.", by(rows["running"]))
    lines += per_worker_durations(rows["durations"])
    expiries = by(rows["expiries"])
    lines += counter("wanflow_lease_expiries", "Jobs whose worker stopped renewing its lease.", expiries)
    live = [({"worker": w["name"]}, int(w["live"])) for w in store.workers()]
    lines += gauge("wanflow_worker_live", "1 while the worker heartbeats within its lease.", live)
    return "\n".join(lines) + "\n"


def by(rows: list[dict], *keys: str) -> list[tuple[dict, float]]:
    keys = keys or ("worker", "model")
    return [({key: row[key] or "" for key in keys}, row["n"]) for row in rows]


def per_worker_durations(rows: list[dict]) -> list[str]:
    lines = [
        "# HELP wanflow_job_seconds Run time of the finished jobs, per worker and model.",
        "# TYPE wanflow_job_seconds summary",
    ]
    for row in rows:
        labels = render({"worker": row["worker"] or "", "model": row["model"] or ""})
        lines += [
            f"wanflow_job_seconds_sum{labels} {float(row['total']):.3f}",
            f"wanflow_job_seconds_count{labels} {row['n']}",
        ]
    return lines


def gauge(name: str, text: str, samples: list[tuple[dict, float]]) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} gauge"] + [f"{name}{render(l)} {v}" for l, v in samples]


def counter(name: str, text: str, samples: list[tuple[dict, float]]) -> list[str]:
    head = [f"# HELP {name}_total {text}", f"# TYPE {name}_total counter"]
    return head + [f"{name}_total{render(l)} {v}" for l, v in samples]


def render(labels: dict) -> str:
    """``{a="x",b="y"}``, values escaped as the format says; nothing for no labels."""
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

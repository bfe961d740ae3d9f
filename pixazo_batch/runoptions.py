"""The options of ``run`` that map one to one onto ``Settings`` fields, and the simulator's
scenarios: the tables from which the CLI builds its flags and the commands read them back
(``config.py`` checks their values)."""

from __future__ import annotations

#: the simulator's scenarios (named here so the CLI never imports the simulator until asked)
SANDBOX_SCENARIOS = ("demo", "fast", "realistic", "hostile", "broke")

#: run flags that map one to one onto Settings fields: (type, metavar, help, choices)
RUN_OPTIONS: dict[str, tuple[type, str, str, list[str] | None]] = {
    "concurrency": (int, "N", "HTTP requests to the gateway at once", None),
    "max_in_flight": (int, "N", "jobs submitted and not yet finished", None),
    "rps": (float, "R", "ceiling of gateway requests per second, submits and polls", None),
    "max_attempts": (int, "N", "submissions per job (remote ERROR and refusals count)", None),
    "poll_interval": (float, "S", "seconds between two polls of one job", None),
    "job_deadline": (float, "S", "seconds before an unfinished job is reported stalled", None),
    "max_spend": (str, "USD", "cap on the committed spend recorded in the state file", None),
    "downloads": (int, "N", "downloads at once", None),
    "download_tries": (int, "N", "tries per download in one run", None),
    "max_video_mb": (int, "MB", "largest video accepted, in MiB", None),
    "download_stall": (float, "S", "seconds a media body may bring nothing before a restart", None),
    "stop_deadline": (float, "S", "seconds POSTs on the wire get after SIGINT/SIGTERM", None),
    "outage_deadline": (float, "S", "seconds the gateway, CDN or bucket may be unreachable", None),
    "retry_after_cap": (float, "S", "longest Retry-After honoured", None),
    "webhook_url": (str, "URL", "public https URL reaching --webhook-listen: callbacks on", None),
    "webhook_listen": (str, "HOST:PORT", "where the callback listener binds", None),
    "webhook_mode": (str, "MODE", "terminal or sync (a callback a tick)", ["terminal", "sync"]),
    "uncertain_wait": (float, "S", "with webhooks, how long a lost-answer job waits", None),
    "webhook_secret_days": (float, "DAYS", "how long earlier runs' callback URLs stay valid", None),
    "worker_timeout": (float, "S", "with a postgresql:// state: a silent worker is dead", None),
}  # fmt: skip
RUN_SWITCHES: dict[str, str] = {
    "resubmit_uncertain": "submit uncertain jobs again (each may then be paid twice)",
    "abandon_uncertain": "give up uncertain jobs (mark them failed)",
    "retry_failed": "submit jobs that ended FAILED again",
    "strict": "stop at the first bad manifest line",
}

-- The state file of pixazo-batch (SQLite). Every statement is idempotent.
-- Every job; line_digest is manifest.line_digest of the line last read into the job when the
-- line alone makes it (a later run knows that line without reading it again).
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    request_json TEXT NOT NULL,
    price_cents INTEGER NOT NULL,
    output TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    request_id TEXT,
    polling_url TEXT,
    remote_status TEXT,
    media_url TEXT,
    bytes INTEGER,
    sha256 TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    submitted_at REAL,
    finished_at REAL,
    video_seconds REAL,
    video_width INTEGER,
    video_height INTEGER,
    mismatch TEXT,
    line_digest BLOB
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    request_id TEXT,
    outcome TEXT NOT NULL,
    price_cents INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    PRIMARY KEY (job_id, n)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    exit_code INTEGER
);
-- Manifests read through in full with no bad line: their digest and how many jobs they hold.
CREATE TABLE IF NOT EXISTS manifests (
    digest TEXT PRIMARY KEY,
    jobs INTEGER NOT NULL,
    registered_at REAL NOT NULL
);
-- Per-run secrets that sign webhook callback URLs (never the API key).
CREATE TABLE IF NOT EXISTS webhook_secrets (
    run_id INTEGER PRIMARY KEY,
    secret TEXT NOT NULL
);
-- Pauses the gateway announced (Retry-After), by origin: a later run waits out what is left.
CREATE TABLE IF NOT EXISTS pauses (
    origin TEXT PRIMARY KEY,
    until REAL NOT NULL
);
-- Request ids that callbacks named for uncertain jobs: hints, believed once a status request
-- confirms them.
CREATE TABLE IF NOT EXISTS callback_hints (
    job_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (job_id, request_id)
);
-- What the poll planner learned about a gateway's speed: one scale a finished job (seconds for
-- a 540p, 5-second job), the most recent kept.
CREATE TABLE IF NOT EXISTS speed_samples (
    origin TEXT NOT NULL,
    n INTEGER NOT NULL,
    scale REAL NOT NULL,
    PRIMARY KEY (origin, n)
);
-- Local images that manifest lines name, by their key in the inputs bucket (their sha256).
CREATE TABLE IF NOT EXISTS input_files (
    key TEXT PRIMARY KEY,
    path TEXT NOT NULL
);

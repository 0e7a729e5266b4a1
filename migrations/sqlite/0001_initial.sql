-- dataminer initial schema (SQLite). Timestamps are epoch milliseconds from the database
-- clock; JSON is stored as TEXT. Append-only: never edit a migration after it has landed.

CREATE TABLE projects (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    config      TEXT    NOT NULL,
    cancelled   INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE videos (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    url            TEXT    NOT NULL,
    url_key        TEXT    NOT NULL UNIQUE,
    source_kind    TEXT    NOT NULL,
    origin         TEXT    NOT NULL,
    state          TEXT    NOT NULL,
    failed_stage   TEXT,
    error          TEXT,
    priority       INTEGER NOT NULL DEFAULT 0,
    extract_config TEXT    NOT NULL,
    sha256         TEXT,
    size_bytes     INTEGER,
    duration_s     REAL,
    fps            REAL,
    width          INTEGER,
    height         INTEGER,
    codec          TEXT,
    file_path      TEXT,
    frames_dir     TEXT,
    manifest_path  TEXT,
    frame_count    INTEGER,
    content_of     INTEGER REFERENCES videos(id),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX videos_state ON videos (state, id);
CREATE INDEX videos_sha256 ON videos (sha256) WHERE sha256 IS NOT NULL;
CREATE INDEX videos_content_of ON videos (content_of) WHERE content_of IS NOT NULL;

CREATE TABLE project_videos (
    project_id      INTEGER NOT NULL REFERENCES projects(id),
    video_id        INTEGER NOT NULL REFERENCES videos(id),
    state           TEXT    NOT NULL,
    failed_stage    TEXT,
    error           TEXT,
    frames_in       INTEGER,
    frames_filtered INTEGER,
    frames_deduped  INTEGER,
    detections      INTEGER,
    filter_dir      TEXT,
    dedup_dir       TEXT,
    detect_dir      TEXT,
    kept_seq        INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (project_id, video_id)
);
CREATE INDEX project_videos_video ON project_videos (video_id);
CREATE INDEX project_videos_state ON project_videos (project_id, state);
CREATE UNIQUE INDEX project_videos_kept_seq ON project_videos (project_id, kept_seq) WHERE kept_seq IS NOT NULL;

CREATE TABLE tasks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    stage            TEXT    NOT NULL,
    video_id         INTEGER NOT NULL REFERENCES videos(id),
    project_id       INTEGER REFERENCES projects(id),
    state            TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    run_after        INTEGER NOT NULL,
    concurrency_key  TEXT,
    requires         TEXT,
    time_limit_ms    INTEGER NOT NULL,
    lease_token      INTEGER NOT NULL DEFAULT 0,
    leased_by        INTEGER,
    leased_at        INTEGER,
    lease_expires_at INTEGER,
    progress         TEXT,
    result           TEXT,
    output_path      TEXT,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER
);
-- The lease query: runnable tasks of a stage, priority then age.
CREATE INDEX tasks_queue ON tasks (stage, priority DESC, id, run_after) WHERE state = 'queued';
-- The reaper: leases by expiry.
CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE state = 'leased';
-- Backstop for the concurrency key: never two leased tasks with the same key.
CREATE UNIQUE INDEX tasks_key_leased ON tasks (concurrency_key) WHERE state = 'leased' AND concurrency_key IS NOT NULL;
CREATE INDEX tasks_video ON tasks (video_id);
CREATE INDEX tasks_state_stage ON tasks (state, stage);

CREATE TABLE agents (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT    NOT NULL UNIQUE,
    node             TEXT,
    stages           TEXT    NOT NULL,
    capabilities     TEXT    NOT NULL,
    version          TEXT    NOT NULL,
    protocol_version INTEGER NOT NULL,
    registered_at    INTEGER NOT NULL,
    last_seen        INTEGER NOT NULL
);
CREATE INDEX agents_last_seen ON agents (last_seen);

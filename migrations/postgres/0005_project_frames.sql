-- Per-frame results of the model stages. project_frames holds the frames the filter KEPT
-- (dropped frames live in the attempt's files and in counts), so the table stays the size of
-- the dataset; dedup fills in each row's decision. A completion replaces the rows of its
-- (project, video, stage) in its own transaction, so a retry replaces, never adds.
CREATE TABLE project_frames (
    project_id         BIGINT NOT NULL REFERENCES projects(id),
    video_id           BIGINT NOT NULL REFERENCES videos(id),
    frame_index        BIGINT NOT NULL,
    pts_s              DOUBLE PRECISION NOT NULL,
    path               TEXT   NOT NULL,
    width              BIGINT NOT NULL,
    height             BIGINT NOT NULL,
    best_prompt        BIGINT NOT NULL,
    pos_max            DOUBLE PRECISION NOT NULL,
    neg_max            DOUBLE PRECISION,
    junk_max           DOUBLE PRECISION,
    dedup_state        TEXT,
    duplicate_of_video BIGINT,
    duplicate_of_frame BIGINT,
    similarity         DOUBLE PRECISION,
    PRIMARY KEY (project_id, video_id, frame_index)
);
-- `/frames?state=` pages and the kept/duplicate counts; the primary key serves `video=`.
CREATE INDEX project_frames_state ON project_frames (project_id, dedup_state, video_id, frame_index);

-- What each stage ran with (the agent's config + package digest for filter, the embedder
-- package digest for dedup: the kept set's compatibility key) and the frames filter could
-- not decode.
ALTER TABLE project_videos ADD COLUMN filter_digest TEXT;
ALTER TABLE project_videos ADD COLUMN dedup_digest TEXT;
ALTER TABLE project_videos ADD COLUMN frames_unreadable BIGINT;

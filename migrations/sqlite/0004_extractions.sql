-- Extraction is shared per (content, extract settings), not per content: a project with other
-- settings gets its own frames, never another project's. An extraction is keyed by the
-- content's sha256 and the canonical JSON of the settings the strategy uses; its source is the
-- video whose file is read. A video's state is now its download's; project-videos record the
-- settings they joined with and the extraction they use.
CREATE TABLE extractions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256        TEXT   NOT NULL,
    settings_key  TEXT   NOT NULL,
    config        TEXT   NOT NULL,
    video_id      BIGINT NOT NULL REFERENCES videos(id),
    state         TEXT   NOT NULL,
    error         TEXT,
    frames_dir    TEXT,
    manifest_path TEXT,
    frame_count   BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX extractions_key ON extractions (sha256, settings_key);
CREATE INDEX extractions_video ON extractions (video_id);

ALTER TABLE project_videos ADD COLUMN extract_config TEXT;
ALTER TABLE project_videos ADD COLUMN extraction_id BIGINT REFERENCES extractions(id);
CREATE INDEX project_videos_extraction ON project_videos (extraction_id) WHERE extraction_id IS NOT NULL;
ALTER TABLE tasks ADD COLUMN extraction_id BIGINT REFERENCES extractions(id);
CREATE INDEX tasks_extraction ON tasks (extraction_id) WHERE extraction_id IS NOT NULL;

-- Carry existing rows over. Every project of a video used the video's settings until now, so
-- that is what their project-videos record. Keys are written as 'legacy:<config>' here and
-- made canonical by the control plane at start (the canonical form is computed in Rust).
INSERT INTO extractions (sha256, settings_key, config, video_id, state, error, frames_dir, manifest_path,
                         frame_count, created_at, updated_at)
SELECT v.sha256, 'legacy:' || v.extract_config, v.extract_config, v.id,
       CASE v.state WHEN 'DOWNLOADED' THEN 'PENDING' WHEN 'EXTRACTING' THEN 'EXTRACTING'
                    WHEN 'EXTRACTED' THEN 'EXTRACTED' WHEN 'FAILED' THEN 'FAILED' ELSE 'CANCELLED' END,
       CASE WHEN v.state = 'FAILED' THEN v.error END, v.frames_dir, v.manifest_path, v.frame_count,
       v.created_at, v.updated_at
FROM videos v
WHERE v.sha256 IS NOT NULL AND v.content_of IS NULL
  AND (v.state IN ('DOWNLOADED', 'EXTRACTING', 'EXTRACTED')
       OR EXISTS (SELECT 1 FROM tasks t WHERE t.video_id = v.id AND t.stage = 'extract'))
ORDER BY v.id
ON CONFLICT (sha256, settings_key) DO NOTHING;

UPDATE tasks SET extraction_id = (
    SELECT e.id FROM extractions e JOIN videos v ON v.sha256 = e.sha256 AND e.settings_key = 'legacy:' || v.extract_config
    WHERE v.id = tasks.video_id)
WHERE stage = 'extract';

UPDATE project_videos SET extract_config = (SELECT v.extract_config FROM videos v WHERE v.id = project_videos.video_id);
UPDATE project_videos SET extraction_id = (
    SELECT e.id FROM extractions e JOIN videos v ON v.sha256 = e.sha256
    WHERE v.id = project_videos.video_id AND e.settings_key = 'legacy:' || project_videos.extract_config);

-- A video's state is its download's; an extract failure belongs to the extraction (and the
-- project-videos it failed), no longer to the video.
UPDATE videos SET state = 'DOWNLOADED' WHERE state IN ('EXTRACTING', 'EXTRACTED');
UPDATE videos SET state = 'DOWNLOADED', failed_stage = NULL, error = NULL
WHERE state = 'FAILED' AND failed_stage = 'extract';

-- The duration a container claims, beside the video stream's real one (duration_s).
ALTER TABLE videos ADD COLUMN container_duration_s DOUBLE PRECISION;

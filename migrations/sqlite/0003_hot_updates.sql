-- Same index set as PostgreSQL's 0003 (there, to make state changes HOT updates): counts by
-- state scan anyway, so these indexes only cost writes.
DROP INDEX tasks_state_stage;
DROP INDEX project_videos_state;
DROP INDEX videos_state;

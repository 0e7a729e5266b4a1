-- Same index set as PostgreSQL's 0002: counts by state scan anyway, so these indexes only
-- cost writes; the dead-task list gets a small partial index instead.
DROP INDEX tasks_state_stage;
CREATE INDEX tasks_dead ON tasks (id) WHERE state = 'dead';
DROP INDEX project_videos_state;

-- Fewer index writes on the hottest rows. Counts by state (status, metrics) scan anyway, so
-- the (state, stage) index on tasks only cost writes; the dead-task list gets a small partial
-- index instead. Without an index on its state column, a project-video's state changes become
-- HOT updates (no new index entries, less bloat) when the page has room, hence the fillfactor.
DROP INDEX tasks_state_stage;
CREATE INDEX tasks_dead ON tasks (id) WHERE state = 'dead';
DROP INDEX project_videos_state;
ALTER TABLE project_videos SET (fillfactor = 70);
ALTER TABLE agents SET (fillfactor = 50);

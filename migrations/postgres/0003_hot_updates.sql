-- Fewer index writes on the hottest rows. Counts by state (status, metrics) scan anyway, so
-- the (state, stage) index on tasks only cost writes. Without an index on their state
-- columns, video and project-video state changes become HOT updates (no new index entries,
-- less bloat) when the page has room, hence the lower fillfactor.
DROP INDEX tasks_state_stage;
DROP INDEX project_videos_state;
DROP INDEX videos_state;
ALTER TABLE project_videos SET (fillfactor = 70);
ALTER TABLE videos SET (fillfactor = 70);
ALTER TABLE agents SET (fillfactor = 50);

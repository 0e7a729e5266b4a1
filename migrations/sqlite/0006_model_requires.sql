-- Model tasks require their project's model: a filter, dedup or detect task is only leased to
-- an agent advertising the capability `model:<the project's model for the stage>`. Tasks
-- written before this carry it from now on (succeeded ones are history and keep NULL).
UPDATE tasks SET requires = 'model:' || (
    SELECT json_extract(p.config, '$.' || tasks.stage || '.model') FROM projects p WHERE p.id = tasks.project_id)
WHERE requires IS NULL AND stage IN ('filter', 'dedup', 'detect') AND project_id IS NOT NULL
  AND state IN ('queued', 'leased', 'dead', 'cancelled');

-- `/status`, `/metrics` and a project's status group the queued tasks that require a
-- capability by stage and capability: an ordered scan of this small covering index (only
-- queued tasks with a requirement), never of the tasks.
CREATE INDEX tasks_requires ON tasks (stage, requires, project_id, run_after) WHERE state = 'queued' AND requires IS NOT NULL;

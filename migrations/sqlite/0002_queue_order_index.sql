-- Lease candidates across several stages in queue order (priority, then age) straight from
-- one index, so a lease locks exactly the rows it takes and never sorts the queue.
CREATE INDEX tasks_queue_order ON tasks (priority DESC, id) WHERE state = 'queued';

// Graphile Worker baseline for BENCHMARKS.md: queue JOBS no-op jobs, then burn them down
// from one process with CONCURRENCY concurrent jobs; prints one JSON line.
//   DATABASE_URL=postgres://… JOBS=10000 CONCURRENCY=24 node bench.mjs
import { EventEmitter } from "node:events";
import pg from "pg";
import { Logger, run, runMigrations } from "graphile-worker";

// Silent: per-job log lines would slow the baseline down; it gets its best case.
const logger = new Logger(() => () => {});

const connectionString = process.env.DATABASE_URL;
const jobs = Number(process.env.JOBS ?? 10000);
const concurrency = Number(process.env.CONCURRENCY ?? 24);

await runMigrations({ connectionString, logger });
const pool = new pg.Pool({ connectionString, max: 2 });
await pool.query("select graphile_worker.add_job('noop', '{}'::json) from generate_series(1, $1)", [jobs]);

let completed = 0;
let resolveDone;
const done = new Promise((r) => (resolveDone = r));
const events = new EventEmitter();
events.on("job:complete", () => {
  completed += 1;
  if (completed === jobs) resolveDone();
});
const t0 = performance.now();
const runner = await run({
  connectionString,
  concurrency,
  noHandleSignals: true,
  pollInterval: 1000,
  events,
  logger,
  taskList: { noop: async () => {} },
});
await done;
const seconds = (performance.now() - t0) / 1000;
await runner.stop();
const left = (await pool.query("select count(*)::int as n from graphile_worker.jobs")).rows[0].n;
await pool.end();
console.log(JSON.stringify({ system: "graphile-worker@0.16.6", backend: "postgres", jobs, concurrency, seconds: Math.round(seconds * 1000) / 1000, jobs_per_s: Math.round(jobs / seconds), jobs_left: left }));

//! `dm-bench`: measures the lease protocol end to end against a release control plane with
//! production defaults (auth on, default lease TTL and pool sizes, stock PostgreSQL).
//!
//! `dm-bench run` starts the control plane, measures submit→lease latency on an idle queue,
//! then loads the queue and starts N simulated agents — separate `dm-bench agent`
//! processes talking HTTP over TCP — that lease up to 64 tasks at a time and complete them in
//! one batch call, each completion enqueuing its real successor (download → extract →
//! filter → dedup → detect). It prints one JSON line: completed tasks/s, lease latency
//! p50/p99 and submit→lease p50/p99. `bench/run.sh` runs it on SQLite and PostgreSQL and
//! Graphile Worker beside it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dataminer_wire::*;
use serde_json::json;

const USER_TOKEN: &str = "bench-user-token-0123456789";
const AGENT_TOKEN: &str = "bench-agent-token-0123456789";

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Orchestrate one benchmark run.
    Run {
        #[arg(long, value_enum)]
        backend: Backend,
        /// Simulated agent processes.
        #[arg(long, default_value_t = 8)]
        agents: usize,
        /// Videos to push through the pipeline (5 tasks each).
        #[arg(long, default_value_t = 4000)]
        videos: usize,
        /// Projects the videos are spread over (dedup runs one at a time per project).
        #[arg(long, default_value_t = 64)]
        projects: usize,
        /// Tasks per lease and per batch completion (at most 64).
        #[arg(long, default_value_t = 64)]
        batch: u32,
        /// Idle-queue submit→lease samples.
        #[arg(long, default_value_t = 200)]
        idle_samples: usize,
        /// The release control-plane binary.
        #[arg(long, default_value = "target/release/control-plane")]
        control_plane: PathBuf,
        /// PostgreSQL admin URL (for --backend postgres).
        #[arg(long, env = "DATAMINER_BENCH_PG_URL")]
        pg_url: Option<String>,
        #[arg(long, default_value_t = 18090)]
        port: u16,
    },
    /// One simulated agent (started by `run`).
    Agent {
        #[arg(long)]
        base: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        batch: u32,
        #[arg(long)]
        stop_file: PathBuf,
        #[arg(long)]
        samples_out: PathBuf,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run { backend, agents, videos, projects, batch, idle_samples, control_plane, pg_url, port } => {
            run(RunArgs { backend, agents, videos, projects, batch, idle_samples, control_plane, pg_url, port }).await
        }
        Cmd::Agent { base, name, batch, stop_file, samples_out } => {
            agent(base, name, batch, stop_file, samples_out).await
        }
    }
}

struct RunArgs {
    backend: Backend,
    agents: usize,
    videos: usize,
    projects: usize,
    batch: u32,
    idle_samples: usize,
    control_plane: PathBuf,
    pg_url: Option<String>,
    port: u16,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A plausible stage result inside the attempt directory; content = video id so no two
/// videos are linked as identical.
fn result_for(t: &LeasedTask) -> StageResult {
    let d = &t.attempt_dir;
    match t.stage {
        Stage::Download => StageResult::Download {
            file_path: format!("{d}/video.mp4"),
            sha256: format!("{:064x}", t.input.video_id),
            size_bytes: 1_000_000,
            duration_s: Some(60.0),
            fps: Some(30.0),
            width: Some(1280),
            height: Some(720),
            codec: Some("h264".into()),
            start_time_s: Some(0.0),
            stream_frames: Some(1800),
            container_duration_s: None,
        },
        Stage::Extract => {
            StageResult::Extract { frames_dir: d.clone(), manifest_path: format!("{d}/manifest.json"), frame_count: 60 }
        }
        // Per-frame rows as a real agent reports them: the filter keeps frames 1..=10 of the
        // extraction, dedup keeps 1..=5 and drops 6..=10 as duplicates of frame 1.
        Stage::Filter => {
            let frames_dir = t.input.frames_dir.clone().unwrap_or_default();
            StageResult::Filter {
                output_dir: d.clone(),
                frames_in: 60,
                frames_kept: 10,
                frames: (1..=10)
                    .map(|i| FilterFrame {
                        frame_index: i,
                        pts_s: i as f64,
                        path: format!("{frames_dir}/frame_{i:06}.jpg"),
                        width: 1280,
                        height: 720,
                        best_prompt: 0,
                        pos_max: 0.9,
                        neg_max: None,
                        junk_max: None,
                    })
                    .collect(),
                frames_unreadable: 0,
                config_digest: "bench".into(),
            }
        }
        Stage::Dedup => StageResult::Dedup {
            output_dir: d.clone(),
            frames_in: 10,
            frames_kept: 5,
            decisions: (1..=10)
                .map(|i| DedupDecision {
                    frame_index: i,
                    kept: i <= 5,
                    duplicate_of: (i > 5).then_some(FrameRef { video_id: t.input.video_id, frame_index: 1 }),
                    similarity: (i > 5).then_some(0.95),
                })
                .collect(),
            model_digest: "bench".into(),
        },
        Stage::Detect => StageResult::Detect { output_dir: d.clone(), frames_in: 5, detections: 7 },
    }
}

async fn agent(base: String, name: String, batch: u32, stop_file: PathBuf, samples_out: PathBuf) -> Result<()> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(4).build()?;
    // The projects use the default models; model tasks require them (`model:<name>`).
    let models = ProjectConfig::default();
    let caps: Vec<String> = Stage::ALL.iter().filter_map(|s| models.requires(*s)).collect();
    let reg: RegisterAgentResponse = client
        .post(format!("{base}/v1/agents/register"))
        .bearer_auth(AGENT_TOKEN)
        .json(&json!({"name": name, "stages": Stage::ALL, "capabilities": caps, "version": "bench",
                      "protocol_version": PROTOCOL_VERSION}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut samples: Vec<f64> = Vec::new();
    while !stop_file.exists() {
        let t0 = Instant::now();
        let r = client
            .post(format!("{base}/v1/leases"))
            .bearer_auth(AGENT_TOKEN)
            .json(&json!({"agent_id": reg.agent_id, "stages": Stage::ALL, "max_tasks": batch, "wait_ms": 200}))
            .send()
            .await?
            .error_for_status()?;
        let leased: LeaseResponse = r.json().await?;
        if leased.tasks.is_empty() {
            continue;
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        let completions: Vec<BatchCompletion> = leased
            .tasks
            .iter()
            .map(|t| BatchCompletion { task_id: t.task_id, lease_token: t.lease_token, result: result_for(t) })
            .collect();
        let r: BatchCompleteResponse = client
            .post(format!("{base}/v1/tasks/complete"))
            .bearer_auth(AGENT_TOKEN)
            .json(&BatchCompleteRequest { completions })
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if let Some(bad) = r.results.iter().find(|o| o.status != 200) {
            bail!("completion refused: {bad:?}");
        }
    }
    let text: Vec<String> = samples.iter().map(|s| format!("{s:.3}")).collect();
    std::fs::write(&samples_out, text.join("\n"))?;
    Ok(())
}

async fn run(a: RunArgs) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("dm-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch)?;
    let base = format!("http://127.0.0.1:{}", a.port);
    let mut cmd = tokio::process::Command::new(&a.control_plane);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("DATAMINER_LISTEN", format!("127.0.0.1:{}", a.port))
        .env("DATAMINER_STATE_DIR", &scratch)
        .env("DATAMINER_USER_TOKEN", USER_TOKEN)
        .env("DATAMINER_AGENT_TOKEN", AGENT_TOKEN)
        .stdout(Stdio::from(std::fs::File::create(scratch.join("control-plane.log"))?))
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if a.backend == Backend::Postgres {
        use sqlx::Connection;
        let admin = a.pg_url.clone().context("--pg-url or DATAMINER_BENCH_PG_URL is required for postgres")?;
        let name = format!("dm_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
        let url = format!("{}/{name}", admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin));
        cmd.env("DATABASE_URL", url);
    }
    eprintln!("control-plane log: {}", scratch.join("control-plane.log").display());
    let mut cp = cmd.spawn().context("start the control plane (build it with cargo build --release)")?;
    let client = reqwest::Client::new();
    let ready_by = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/readyz")).send().await.map(|r| !r.status().is_success()).unwrap_or(true) {
        if Instant::now() > ready_by {
            bail!("control plane did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in 0..a.projects.max(1) {
        client
            .post(format!("{base}/v1/projects"))
            .bearer_auth(USER_TOKEN)
            .json(&json!({"name": format!("p{p}"), "config": {"filter": {"positive_prompts": ["a glass door"]}}}))
            .send()
            .await?
            .error_for_status()?;
    }

    // Idle queue: one waiting agent, one submission, time until the lease answer arrives.
    let probe: RegisterAgentResponse = client
        .post(format!("{base}/v1/agents/register"))
        .bearer_auth(AGENT_TOKEN)
        .json(
            &json!({"name": "probe", "stages": ["download"], "version": "bench", "protocol_version": PROTOCOL_VERSION}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut idle: Vec<f64> = Vec::new();
    for i in 0..a.idle_samples {
        let waiter = {
            let client = client.clone();
            let base = base.clone();
            tokio::spawn(async move {
                let r = client
                    .post(format!("{base}/v1/leases"))
                    .bearer_auth(AGENT_TOKEN)
                    .json(
                        &json!({"agent_id": probe.agent_id, "stages": ["download"], "max_tasks": 1, "wait_ms": 10000}),
                    )
                    .send()
                    .await?
                    .error_for_status()?;
                let l: LeaseResponse = r.json().await?;
                Ok::<_, anyhow::Error>((l, Instant::now()))
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t0 = Instant::now();
        let sub: SubmitVideosResponse = client
            .post(format!("{base}/v1/videos"))
            .bearer_auth(USER_TOKEN)
            .json(&json!({"urls": [format!("https://idle.example.com/{i}.mp4")], "projects": ["p0"]}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let (leased, at) = waiter.await??;
        if leased.tasks.len() != 1 {
            bail!("idle probe got {} tasks", leased.tasks.len());
        }
        idle.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        client
            .post(format!("{base}/v1/videos/{}/cancel", sub.videos[0].id))
            .bearer_auth(USER_TOKEN)
            .send()
            .await?
            .error_for_status()?;
    }

    // Load: all videos queued, then N agent processes burn the pipeline down.
    // Videos are spread round-robin over the projects so dedup keys do not serialise
    // everything on one project.
    let projects = a.projects.max(1);
    for p in 0..projects {
        let urls: Vec<String> =
            (0..a.videos).filter(|i| i % projects == p).map(|i| format!("https://load.example.com/{i}.mp4")).collect();
        for chunk in urls.chunks(1000) {
            client
                .post(format!("{base}/v1/videos"))
                .bearer_auth(USER_TOKEN)
                .json(&json!({"urls": chunk, "projects": [format!("p{p}")]}))
                .send()
                .await?
                .error_for_status()?;
        }
    }
    let total = (a.videos * 5) as i64;
    let stop_file = scratch.join("stop");
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let mut children = Vec::new();
    for i in 0..a.agents {
        let child = tokio::process::Command::new(&exe)
            .args(["agent", "--base", &base, "--name", &format!("agent-{i}"), "--batch", &a.batch.to_string()])
            .arg("--stop-file")
            .arg(&stop_file)
            .arg("--samples-out")
            .arg(scratch.join(format!("samples-{i}.txt")))
            .kill_on_drop(true)
            .spawn()?;
        children.push(child);
    }
    let done_by = Instant::now() + Duration::from_secs(900);
    let elapsed = loop {
        let st: StatusReport = client
            .get(format!("{base}/status"))
            .bearer_auth(USER_TOKEN)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let succeeded: i64 = st.tasks.values().map(|m| m.get("succeeded").copied().unwrap_or(0)).sum();
        if succeeded >= total {
            break start.elapsed();
        }
        if Instant::now() > done_by {
            bail!("load did not finish: {succeeded}/{total}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    std::fs::write(&stop_file, b"")?;
    for mut c in children {
        let s = c.wait().await?;
        if !s.success() {
            bail!("an agent process failed: {s}");
        }
    }
    let mut lease_ms: Vec<f64> = Vec::new();
    for i in 0..a.agents {
        let text = std::fs::read_to_string(scratch.join(format!("samples-{i}.txt")))?;
        lease_ms.extend(text.lines().filter_map(|l| l.parse::<f64>().ok()));
    }
    lease_ms.sort_by(f64::total_cmp);
    idle.sort_by(f64::total_cmp);
    let summary = json!({
        "system": "dataminer",
        "backend": format!("{:?}", a.backend).to_lowercase(),
        "agents": a.agents,
        "batch": a.batch,
        "videos": a.videos,
        "projects": a.projects,
        "tasks": total,
        "seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "tasks_per_s": (total as f64 / elapsed.as_secs_f64()).round(),
        "lease_ms_p50": percentile(&lease_ms, 0.50),
        "lease_ms_p99": percentile(&lease_ms, 0.99),
        "submit_to_lease_ms_p50": percentile(&idle, 0.50),
        "submit_to_lease_ms_p99": percentile(&idle, 0.99),
        "idle_samples": idle.len(),
    });
    println!("{summary}");
    let _ = cp.kill().await;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

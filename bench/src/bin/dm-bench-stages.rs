//! Agent stage benchmarks against their bare-tool baselines, on this machine:
//! - extract: the agent's extract stage vs bare ffmpeg running the same select filter on
//!   the same file (target: wall-time ratio ≤ 1.05);
//! - download: the agent's direct download (guard, streaming, SHA-256, write, fsync) vs
//!   `curl -s URL | tee FILE | sha256sum`, both from the same loopback server
//!   (target: throughput ratio ≥ 0.9).
//!
//! Runs alternate between the two sides; medians are reported.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use dataminer_agent::config::Config;
use dataminer_agent::metrics::Metrics;
use dataminer_agent::stages::download::guard::Guard;
use dataminer_agent::stages::{Progress, StageContext};
use dataminer_wire::{ExtractConfig, ExtractStrategy, LeasedTask, Stage, TaskInput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// Scratch directory (inputs are generated once and kept).
    #[arg(long, default_value = "bench/results/stages")]
    dir: PathBuf,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Extract input: seconds of 1280x720 at 30 fps.
    #[arg(long, default_value_t = 60)]
    video_s: u32,
    /// Download size, MiB.
    #[arg(long, default_value_t = 1024)]
    download_mib: u64,
    /// Which benchmarks: extract, download or both.
    #[arg(long, default_value = "both")]
    only: String,
}

fn main() -> Result<()> {
    // The agent's stages run their tools under a supervisor that is this binary re-executed.
    if let Some(code) = dataminer_agent::children::supervisor_main() {
        std::process::exit(code);
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bench())
}

async fn bench() -> Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.dir)?;
    let dir = std::fs::canonicalize(&a.dir)?;
    if a.only != "download" {
        for (label, strategy) in
            [("interval_frames N=30", ExtractStrategy::IntervalFrames), ("scene 0.3", ExtractStrategy::Scene)]
        {
            extract_bench(&dir, &a, label, strategy).await?;
        }
    }
    if a.only != "extract" {
        download_bench(&dir, &a).await?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn context(root: &Path, allow: Vec<String>) -> Result<StageContext> {
    let mut cfg = Config::try_parse_from(["agent", "--min-free-bytes", "0"])?;
    cfg.data_root = root.to_path_buf();
    cfg.allow_hosts = allow.clone();
    Ok(StageContext::new(Arc::new(cfg), Guard::system(&allow), Metrics::new()?))
}

async fn extract_bench(dir: &Path, a: &Args, label: &str, strategy: ExtractStrategy) -> Result<()> {
    let input = dir.join(format!("videos/in/extract-{}s.mp4", a.video_s));
    std::fs::create_dir_all(input.parent().context("parent")?)?;
    if !input.exists() {
        eprintln!("generating {}", input.display());
        let st = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size=1280x720:rate=30:duration={}", a.video_s))
            .args(["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"])
            .arg(&input)
            .status()?;
        if !st.success() {
            bail!("ffmpeg could not generate the input");
        }
    }
    let settings = ExtractConfig { strategy, interval_frames: 30, ..Default::default() };
    let select = match strategy {
        ExtractStrategy::Scene => "eq(n\\,0)+gte(scene\\,0.3)".to_string(),
        _ => "not(mod(n\\,30))".to_string(),
    };
    let ctx = context(dir, vec![])?;
    let (mut bare, mut agent) = (Vec::new(), Vec::new());
    for run in 0..a.runs {
        let out = dir.join("bare");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let t = Instant::now();
        let st = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i"])
            .arg(&input)
            .args(["-vf", &format!("select='{select}'"), "-fps_mode", "passthrough", "-c:v", "mjpeg", "-q:v", "3"])
            .args(["-f", "image2"])
            .arg(out.join("frame_%06d.jpg"))
            .status()?;
        bare.push(t.elapsed().as_secs_f64());
        if !st.success() {
            bail!("bare ffmpeg failed");
        }
        let attempt = format!("frames_raw/1/{run}.1");
        let _ = std::fs::remove_dir_all(dir.join(&attempt));
        std::fs::create_dir_all(dir.join(&attempt))?;
        let task = LeasedTask {
            task_id: run as i64,
            stage: Stage::Extract,
            lease_token: 1,
            attempt: 1,
            max_attempts: 1,
            lease_ttl_ms: 30_000,
            time_limit_ms: 3_600_000,
            attempt_dir: attempt.clone(),
            input: TaskInput {
                video_id: 1,
                video_path: Some(format!("videos/in/extract-{}s.mp4", a.video_s)),
                extract: Some(settings.clone()),
                ..Default::default()
            },
        };
        let t = Instant::now();
        let r = dataminer_agent::stages::extract::run(
            &ctx,
            &task,
            &dir.join(&attempt),
            Arc::new(Progress::default()),
            CancellationToken::new(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("agent extract failed: {e}"))?;
        agent.push(t.elapsed().as_secs_f64());
        let bare_n = std::fs::read_dir(&out)?.count() as i64;
        if let dataminer_wire::StageResult::Extract { frame_count, .. } = r {
            if frame_count != bare_n {
                bail!("frame counts differ: agent {frame_count}, bare ffmpeg {bare_n}");
            }
        }
    }
    let (b, g) = (median(bare), median(agent));
    println!(
        "extract {label}: {}s 1280x720@30 ({} frames decoded): bare ffmpeg {b:.3} s, agent {g:.3} s, ratio {:.3} (median of {})",
        a.video_s,
        a.video_s * 30,
        g / b,
        a.runs
    );
    Ok(())
}

/// A plain loopback file server (1 MiB reads), the same for both clients.
async fn serve_file(path: PathBuf) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let path = path.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 4096];
                let _ = sock.read(&mut req).await;
                let Ok(mut f) = tokio::fs::File::open(&path).await else { return };
                let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                );
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    match f.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(port)
}

async fn download_bench(dir: &Path, a: &Args) -> Result<()> {
    let src = dir.join(format!("download-{}MiB.bin", a.download_mib));
    if std::fs::metadata(&src).map(|m| m.len()).unwrap_or(0) != a.download_mib << 20 {
        eprintln!("writing {}", src.display());
        let st = Command::new("dd")
            .args(["if=/dev/urandom", "bs=1M", "status=none"])
            .arg(format!("of={}", src.display()))
            .arg(format!("count={}", a.download_mib))
            .status()?;
        if !st.success() {
            bail!("dd failed");
        }
    }
    let port = serve_file(src.clone()).await?;
    let url = format!("http://127.0.0.1:{port}/video.mp4");
    let ctx = context(dir, vec![format!("127.0.0.1:{port}")])?;
    let bytes = (a.download_mib << 20) as f64;
    let (mut curl, mut agent) = (Vec::new(), Vec::new());
    for run in 0..a.runs {
        let out = dir.join("curl.out");
        let t = Instant::now();
        let o = Command::new("bash")
            .arg("-c")
            .arg(format!("curl -s {url} | tee {} | sha256sum", out.display()))
            .output()?;
        curl.push(t.elapsed().as_secs_f64());
        let expected = String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_string();
        let _ = std::fs::remove_file(&out);

        let d = dir.join(format!("videos/1/{run}.1"));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        let t = Instant::now();
        let f = dataminer_agent::stages::download::http::fetch(
            &ctx,
            &url::Url::parse(&url)?,
            &d,
            &Arc::new(Progress::default()),
            &CancellationToken::new(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("agent download failed: {e}"))?;
        agent.push(t.elapsed().as_secs_f64());
        if f.sha256 != expected {
            bail!("sha256 differs: agent {}, sha256sum {expected}", f.sha256);
        }
        let _ = std::fs::remove_dir_all(&d);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (c, g) = (median(curl), median(agent));
    let mb = |s: f64| bytes / s / 1e6;
    println!(
        "download {} MiB on loopback: curl|tee|sha256sum {:.0} MB/s, agent {:.0} MB/s, ratio {:.3} (median of {})",
        a.download_mib,
        mb(c),
        mb(g),
        c / g,
        a.runs
    );
    Ok(())
}

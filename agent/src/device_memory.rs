//! GPU memory for the dashboards: libtorch (through `tch`) does not expose CUDA memory, so a
//! `models` agent on a CUDA device samples `nvidia-smi --query-gpu` for its device every 15 s
//! into `dataminer_agent_device_memory_used_bytes` / `_total_bytes` (whole-device figures: a
//! GPU agent pod holds its GPU alone). Without `nvidia-smi` the gauges stay absent and one
//! warning is logged.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// `index, memory.used, memory.total` (MiB) lines of `nvidia-smi --format=csv,noheader,nounits`
/// → (used, total) bytes of device `index`.
pub fn parse(csv: &str, index: u32) -> Option<(u64, u64)> {
    csv.lines().find_map(|l| {
        let f: Vec<&str> = l.split(',').map(str::trim).collect();
        match f.as_slice() {
            [i, used, total] if i.parse::<u32>().ok() == Some(index) => {
                Some((used.parse::<u64>().ok()? << 20, total.parse::<u64>().ok()? << 20))
            }
            _ => None,
        }
    })
}

async fn sample(index: u32) -> Option<(u64, u64)> {
    let mut cmd = crate::children::command(Path::new("nvidia-smi")).ok()?;
    cmd.args(["--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let child = crate::children::Child::spawn(&mut cmd).ok()?;
    let out = tokio::time::timeout(Duration::from_secs(5), child.output()).await.ok()?.ok()?;
    parse(&String::from_utf8_lossy(&out.stdout), index)
}

/// Samples device `index` until `stop`.
pub async fn watch(index: u32, metrics: Metrics, stop: CancellationToken) {
    let device = format!("cuda:{index}");
    let mut warned = false;
    loop {
        match sample(index).await {
            Some((used, total)) => {
                metrics.device_memory_used.with_label_values(&[&device]).set(i64::try_from(used).unwrap_or(i64::MAX));
                metrics.device_memory_total.with_label_values(&[&device]).set(i64::try_from(total).unwrap_or(i64::MAX));
            }
            None if !warned => {
                tracing::warn!(device, "nvidia-smi gave no memory figures: device memory metrics are unavailable");
                warned = true;
            }
            None => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn picks_the_devices_line_in_bytes() {
        let csv = "0, 1024, 81559\n1, 73000, 143771\n";
        assert_eq!(super::parse(csv, 1), Some((73000 << 20, 143771 << 20)));
        assert_eq!(super::parse(csv, 0), Some((1024 << 20, 81559 << 20)));
        assert_eq!(super::parse(csv, 2), None);
        assert_eq!(super::parse("[N/A], x, y\n", 0), None);
    }
}

//! One runner per loaded package (and device), fed by every in-flight task: a thread owns
//! the model and assembles batches from the queued requests of all tasks, so frames of
//! several leased videos share a forward pass, and splits the outputs back per request.
//! Requests are taken in arrival order up to the first request's batch size; a request
//! larger than what is left is split across batches. An out-of-memory error halves the
//! batch limit (down to one frame) and retries the same frames; at one frame it fails the
//! requests of that batch (retryable for their tasks). The limit doubles back after a run of
//! good batches. A request whose task stopped is dropped before its next batch, so a cancel
//! takes effect within one batch. Backend-independent: it drives any [`ModelRunner`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::batch::{pick_rows, Pooling};
use super::runner::{ModelRunner, RunError};

/// Batches at a halved limit before the limit is doubled again.
const RECOVER_AFTER: u32 = 32;

/// What the runner thread reports per forward pass (for the agent's metrics).
pub trait RunObserver: Send + Sync {
    fn batch(&self, model: &str, frames: usize, took: Duration);
}

/// A request: `n` pre-processed images for one task.
struct Job {
    pixels: Vec<f32>,
    n: usize,
    pooling: Pooling,
    max_batch: usize,
    stopped: Arc<AtomicBool>,
    reply: mpsc::Sender<Result<Vec<Vec<f32>>, RunError>>,
}

struct Pending {
    job: Job,
    done: usize,
    rows: Vec<Vec<f32>>,
}

/// The handle tasks submit to; cloning shares the same thread.
#[derive(Clone)]
pub struct SharedRunner {
    name: String,
    device: String,
    overlap: bool,
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for SharedRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRunner").field("name", &self.name).field("device", &self.device).finish()
    }
}

/// A submitted request; [`Ticket::wait`] returns its normalised outputs.
#[derive(Debug)]
pub struct Ticket {
    rx: mpsc::Receiver<Result<Vec<Vec<f32>>, RunError>>,
    stopped: Arc<AtomicBool>,
}

/// Why a ticket has no outputs.
#[derive(Debug)]
pub enum WaitError {
    Stopped,
    Model(RunError),
}

impl Ticket {
    /// Waits for the outputs, polling `stop` (a stopped task's request is dropped by the
    /// runner before its next batch).
    pub fn wait(self, stop: &dyn Fn() -> bool) -> Result<Vec<Vec<f32>>, WaitError> {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(20)) {
                Ok(r) => return r.map_err(WaitError::Model),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if stop() {
                        self.stopped.store(true, Ordering::Relaxed);
                        return Err(WaitError::Stopped);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(WaitError::Model(RunError::Failed {
                        model: "runner".into(),
                        message: "the model runner thread stopped".into(),
                    }))
                }
            }
        }
    }
}

impl SharedRunner {
    /// Starts the thread that owns `runner`; `per_image` is the length of one pre-processed
    /// image (`3 × height × width`). The thread ends when every handle is dropped.
    pub fn start(
        name: &str,
        runner: Arc<dyn ModelRunner>,
        per_image: usize,
        observer: Option<Arc<dyn RunObserver>>,
    ) -> std::io::Result<SharedRunner> {
        let (tx, rx) = mpsc::channel();
        let device = runner.device();
        let model = name.to_string();
        std::thread::Builder::new()
            .name(format!("model-{}", name.chars().take(9).collect::<String>()))
            .spawn(move || serve(&model, runner.as_ref(), per_image, observer.as_deref(), rx))?;
        Ok(SharedRunner { name: name.to_string(), device, overlap: true, tx })
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// Whether tasks should decode their next batch while this runner runs the current one:
    /// only worth it when a core is free for the decoding (the model on a GPU, or fewer model
    /// threads than cores); on a CPU the model already saturates, a concurrent decode only
    /// stalls the model's threads at their barriers.
    pub fn overlaps(&self) -> bool {
        self.overlap
    }

    /// Sets [`SharedRunner::overlaps`] (default: true).
    pub fn with_overlap(mut self, overlap: bool) -> Self {
        self.overlap = overlap;
        self
    }

    /// Queues `n` images (planar, `per_image` floats each) of one task; `stopped` is the
    /// task's flag (set: the runner drops what it has not run yet).
    pub fn submit(
        &self,
        pixels: Vec<f32>,
        n: usize,
        pooling: Pooling,
        max_batch: usize,
        stopped: Arc<AtomicBool>,
    ) -> Result<Ticket, RunError> {
        let (reply, rx) = mpsc::channel();
        let job = Job { pixels, n, pooling, max_batch: max_batch.max(1), stopped: stopped.clone(), reply };
        self.tx.send(job).map_err(|_| RunError::Failed {
            model: self.name.clone(),
            message: "the model runner thread stopped".into(),
        })?;
        Ok(Ticket { rx, stopped })
    }
}

fn serve(
    model: &str,
    runner: &dyn ModelRunner,
    per_image: usize,
    observer: Option<&dyn RunObserver>,
    rx: mpsc::Receiver<Job>,
) {
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut limit = usize::MAX;
    let mut good = 0u32;
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(job) => pending.push_back(Pending { job, done: 0, rows: Vec::new() }),
                Err(_) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            pending.push_back(Pending { job, done: 0, rows: Vec::new() });
        }
        pending.retain(|p| !p.job.stopped.load(Ordering::Relaxed));
        let Some(first) = pending.front() else { continue };
        let cap = first.job.max_batch.min(limit);
        // (index in `pending`, first image, count), consecutive from the front.
        let mut parts = Vec::new();
        let mut total = 0;
        for (i, p) in pending.iter().enumerate() {
            if total == cap {
                break;
            }
            let take = (p.job.n - p.done).min(cap - total);
            parts.push((i, p.done, take));
            total += take;
        }
        let mut pixels = Vec::with_capacity(total * per_image);
        for &(i, from, k) in &parts {
            pixels.extend_from_slice(&pending[i].job.pixels[from * per_image..(from + k) * per_image]);
        }
        let started = Instant::now();
        match runner.image(&pixels, total) {
            Err(RunError::OutOfMemory { message, .. }) if total > 1 => {
                limit = total / 2;
                good = 0;
                tracing::warn!(model, batch = total, now = limit, error = %message, "out of memory: halving the batch");
            }
            Err(e) => {
                if matches!(e, RunError::OutOfMemory { .. }) {
                    tracing::warn!(model, error = %e, "out of memory at one frame: failing the batch's requests");
                }
                for &(i, ..) in parts.iter().rev() {
                    if let Some(p) = pending.remove(i) {
                        let _ = p.job.reply.send(Err(e.clone()));
                    }
                }
            }
            Ok(out) => {
                if let Some(o) = observer {
                    o.batch(model, total, started.elapsed());
                }
                let mut row = 0;
                for &(i, _, k) in &parts {
                    let p = &mut pending[i];
                    p.rows.extend(pick_rows(&out, row, k, p.job.pooling));
                    p.done += k;
                    row += k;
                }
                // Only the front requests can be complete (batches fill from the front).
                while pending.front().is_some_and(|p| p.done == p.job.n) {
                    if let Some(p) = pending.pop_front() {
                        let _ = p.job.reply.send(Ok(p.rows));
                    }
                }
                if limit != usize::MAX {
                    good += 1;
                    if good >= RECOVER_AFTER {
                        limit = limit.saturating_mul(2);
                        good = 0;
                    }
                }
            }
        }
    }
}

/// A test hook (hidden agent settings, see `Config::test_oom_above`): wraps a runner so that
/// a batch of more than `oom_above` frames fails as out of memory, and every batch first
/// sleeps `delay` (to make a task's model phase long enough to cancel or kill).
pub struct HookedRunner {
    pub inner: Arc<dyn ModelRunner>,
    pub oom_above: Option<usize>,
    pub delay: Duration,
}

impl std::fmt::Debug for HookedRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedRunner").field("oom_above", &self.oom_above).field("delay", &self.delay).finish()
    }
}

impl ModelRunner for HookedRunner {
    fn device(&self) -> String {
        self.inner.device()
    }

    fn image(&self, pixels: &[f32], n: usize) -> Result<super::runner::ImageOutput, RunError> {
        std::thread::sleep(self.delay);
        if self.oom_above.is_some_and(|m| n > m) {
            return Err(RunError::OutOfMemory {
                device: self.device(),
                message: format!(
                    "test hook: out of memory above {} frames (batch of {n})",
                    self.oom_above.unwrap_or(0)
                ),
            });
        }
        self.inner.image(pixels, n)
    }

    fn text(&self, ids: &[i64], n: usize) -> Result<super::runner::Matrix, RunError> {
        self.inner.text(ids, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::runner::{ImageOutput, Matrix};
    use std::sync::Mutex;

    /// A scorer whose feature of an image is `[mean of its pixels, 1]`, recording batch sizes.
    struct Fake {
        calls: Mutex<Vec<usize>>,
        oom_above: usize,
        delay: Duration,
    }

    impl ModelRunner for Fake {
        fn device(&self) -> String {
            "cpu".into()
        }
        fn image(&self, pixels: &[f32], n: usize) -> Result<ImageOutput, RunError> {
            self.calls.lock().expect("lock").push(n);
            std::thread::sleep(self.delay);
            if n > self.oom_above {
                return Err(RunError::OutOfMemory { device: "cpu".into(), message: "fake".into() });
            }
            let one = pixels.len() / n;
            let data = (0..n).flat_map(|i| [pixels[i * one..(i + 1) * one].iter().sum::<f32>() / one as f32, 1.0]);
            Ok(ImageOutput::Features(Matrix { rows: n, cols: 2, data: data.collect() }))
        }
        fn text(&self, _: &[i64], _: usize) -> Result<Matrix, RunError> {
            unreachable!()
        }
    }

    fn start(oom_above: usize, delay_ms: u64) -> (SharedRunner, Arc<Fake>) {
        let fake = Arc::new(Fake { calls: Mutex::new(Vec::new()), oom_above, delay: Duration::from_millis(delay_ms) });
        (SharedRunner::start("fake", fake.clone(), 2, None).expect("ok"), fake)
    }

    /// `n` images of two pixels each, image `i` being all `base + i`.
    fn images(base: f32, n: usize) -> Vec<f32> {
        (0..n).flat_map(|i| [base + i as f32; 2]).collect()
    }

    /// The first coordinate of the normalised `[v, 1]`.
    fn decode(rows: &[Vec<f32>]) -> Vec<f32> {
        rows.iter().map(|r| (r[0] / r[1] * 1000.0).round() / 1000.0).collect()
    }

    fn flag() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
    }

    #[test]
    fn requests_of_several_tasks_share_a_batch_and_get_their_own_rows_back() {
        let (r, fake) = start(usize::MAX, 150);
        // The first request keeps the runner busy while the next two queue up.
        let a = r.submit(images(0.0, 1), 1, Pooling::Pooler, 8, flag()).expect("ok");
        std::thread::sleep(Duration::from_millis(50));
        let b = r.submit(images(10.0, 3), 3, Pooling::Pooler, 8, flag()).expect("ok");
        let c = r.submit(images(20.0, 2), 2, Pooling::Pooler, 8, flag()).expect("ok");
        assert_eq!(decode(&a.wait(&|| false).expect("ok")), [0.0]);
        assert_eq!(decode(&b.wait(&|| false).expect("ok")), [10.0, 11.0, 12.0]);
        assert_eq!(decode(&c.wait(&|| false).expect("ok")), [20.0, 21.0]);
        assert_eq!(*fake.calls.lock().expect("lock"), [1, 5]);
    }

    #[test]
    fn a_request_larger_than_the_batch_is_split() {
        let (r, fake) = start(usize::MAX, 0);
        let a = r.submit(images(1.0, 7), 7, Pooling::Pooler, 3, flag()).expect("ok");
        assert_eq!(decode(&a.wait(&|| false).expect("ok")), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        assert_eq!(*fake.calls.lock().expect("lock"), [3, 3, 1]);
    }

    #[test]
    fn out_of_memory_halves_the_batch_and_keeps_every_row() {
        let (r, fake) = start(2, 0);
        let a = r.submit(images(1.0, 7), 7, Pooling::Pooler, 8, flag()).expect("ok");
        assert_eq!(decode(&a.wait(&|| false).expect("ok")), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        // 7 → OOM, limit 3 → OOM, limit 1 … then batches of one (the limit stays halved).
        let calls = fake.calls.lock().expect("lock").clone();
        assert_eq!(&calls[..3], [7, 3, 1]);
        assert_eq!(calls[3..].iter().sum::<usize>(), 6);
        assert!(calls[3..].iter().all(|&n| n <= 2), "{calls:?}");
    }

    #[test]
    fn out_of_memory_at_one_frame_fails_the_request() {
        let (r, _) = start(0, 0);
        let a = r.submit(images(1.0, 4), 4, Pooling::Pooler, 4, flag()).expect("ok");
        assert!(matches!(a.wait(&|| false), Err(WaitError::Model(RunError::OutOfMemory { .. }))));
        // The runner still serves later requests.
        let b = r.submit(images(1.0, 1), 1, Pooling::Pooler, 4, flag()).expect("ok");
        assert!(matches!(b.wait(&|| false), Err(WaitError::Model(RunError::OutOfMemory { .. }))));
    }

    #[test]
    fn a_stopped_request_is_dropped_within_one_batch() {
        let (r, fake) = start(usize::MAX, 100);
        let stop = flag();
        let a = r.submit(images(0.0, 20), 20, Pooling::Pooler, 1, stop.clone()).expect("ok");
        let t = Instant::now();
        let s = stop.clone();
        let asked = move || t.elapsed() > Duration::from_millis(250) || s.load(Ordering::Relaxed);
        assert!(matches!(a.wait(&asked), Err(WaitError::Stopped)));
        std::thread::sleep(Duration::from_millis(250));
        let n = fake.calls.lock().expect("lock").len();
        // About three batches before the stop, at most one more after it.
        assert!((2..=5).contains(&n), "{n} batches ran");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(fake.calls.lock().expect("lock").len(), n, "batches ran after the stop");
    }
}

//! A small static HTTP/1.1 server for the agent tests, on a real socket: it serves files
//! with `Content-Length`, strong ETags and `Range`/`If-Range`, and can redirect, cut a
//! response short once, throttle, or ignore ranges, while logging every request. A
//! [`Canary`] is a listener that only counts the connections it receives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

#[derive(Debug, Default)]
struct Behaviour {
    redirects: HashMap<String, String>,
    /// path → bytes of body to send on the first full GET before closing the connection.
    cut_once: HashMap<String, u64>,
    /// path → bytes per second.
    throttle: HashMap<String, u64>,
    ignore_ranges: bool,
}

#[derive(Debug, Clone)]
pub struct MediaServer {
    pub port: u16,
    root: PathBuf,
    log: Arc<Mutex<Vec<LoggedRequest>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl MediaServer {
    /// Serves `root` on 127.0.0.1 (random port) until the test's runtime ends.
    pub async fn start(root: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind media server");
        let port = listener.local_addr().expect("addr").port();
        let s = MediaServer { port, root, log: Default::default(), behaviour: Default::default() };
        let me = s.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let _ = me.handle(sock).await;
                });
            }
        });
        s
    }

    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }

    pub fn redirect(&self, from: &str, location: &str) {
        self.lock().redirects.insert(format!("/{}", from.trim_start_matches('/')), location.to_string());
    }

    pub fn cut_once(&self, path: &str, after_bytes: u64) {
        self.lock().cut_once.insert(format!("/{}", path.trim_start_matches('/')), after_bytes);
    }

    pub fn throttle(&self, path: &str, bytes_per_s: u64) {
        self.lock().throttle.insert(format!("/{}", path.trim_start_matches('/')), bytes_per_s);
    }

    pub fn ignore_ranges(&self, v: bool) {
        self.lock().ignore_ranges = v;
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.log.lock().expect("log").clone()
    }

    /// GET requests for `path`.
    pub fn gets(&self, path: &str) -> Vec<LoggedRequest> {
        let p = format!("/{}", path.trim_start_matches('/'));
        self.requests().into_iter().filter(|r| r.method == "GET" && r.path == p).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        self.behaviour.lock().expect("behaviour")
    }

    async fn handle(&self, mut sock: TcpStream) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut chunk).await?;
            if n == 0 || buf.len() > 64 * 1024 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf).to_string();
        let mut lines = text.split("\r\n");
        let mut first = lines.next().unwrap_or("").split_whitespace();
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("/").split('?').next().unwrap_or("/").to_string();
        let mut headers = HashMap::new();
        for l in lines.take_while(|l| !l.is_empty()) {
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        self.log.lock().expect("log").push(LoggedRequest {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
        });

        let (redirect, cut, throttle, ignore_ranges) = {
            let b = self.lock();
            (
                b.redirects.get(&path).cloned(),
                b.cut_once.get(&path).copied(),
                b.throttle.get(&path).copied(),
                b.ignore_ranges,
            )
        };
        if let Some(loc) = redirect {
            let resp =
                format!("HTTP/1.1 302 Found\r\nLocation: {loc}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return sock.write_all(resp.as_bytes()).await;
        }
        let name = path.trim_start_matches('/');
        let file = self.root.join(name);
        let data = match (name.contains("..") || name.is_empty(), tokio::fs::read(&file).await) {
            (false, Ok(d)) => d,
            _ => {
                let resp = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                return sock.write_all(resp.as_bytes()).await;
            }
        };
        let etag = format!("\"{:x}-{}\"", data.len(), data.iter().take(4096).map(|b| *b as u64).sum::<u64>());
        let ctype = match name.rsplit('.').next() {
            Some("mp4") => "video/mp4",
            Some("html") => "text/html; charset=utf-8",
            Some("m3u8") => "application/vnd.apple.mpegurl",
            _ => "application/octet-stream",
        };
        let mut start = 0usize;
        let mut status = "200 OK";
        let mut extra = String::new();
        if let (Some(r), false) = (headers.get("range"), ignore_ranges) {
            let if_range_ok = headers.get("if-range").is_none_or(|v| *v == etag);
            let from = r.strip_prefix("bytes=").and_then(|x| x.strip_suffix('-')).and_then(|x| x.parse::<usize>().ok());
            if let (true, Some(f)) = (if_range_ok, from) {
                if f >= data.len() {
                    let resp = format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", data.len());
                    return sock.write_all(resp.as_bytes()).await;
                }
                start = f;
                status = "206 Partial Content";
                extra = format!("Content-Range: bytes {f}-{}/{}\r\n", data.len() - 1, data.len());
            }
        }
        let body = &data[start..];
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        );
        sock.write_all(head.as_bytes()).await?;
        if method == "HEAD" {
            return Ok(());
        }
        let limit = match cut {
            Some(n) if start == 0 => {
                self.lock().cut_once.remove(&path);
                (n as usize).min(body.len())
            }
            _ => body.len(),
        };
        match throttle {
            Some(bps) => {
                // 20 slices a second.
                let slice = ((bps / 20).max(1)) as usize;
                for part in body[..limit].chunks(slice) {
                    sock.write_all(part).await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            None => sock.write_all(&body[..limit]).await?,
        }
        // A cut response ends here: the client sees the connection close before
        // Content-Length bytes arrived.
        sock.flush().await
    }
}

/// A listener that counts connections (and closes them at once).
#[derive(Debug, Clone)]
pub struct Canary {
    pub port: u16,
    hits: Arc<AtomicUsize>,
}

impl Canary {
    pub async fn start(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind canary");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                h.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        Canary { port, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

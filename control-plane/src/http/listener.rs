//! The TCP listener the server accepts on. hyper answers some requests itself, before any
//! router or middleware sees them, with an empty body: a request target longer than 64 KiB
//! (414; the limit is a constant inside hyper), too many or too large headers (431), an
//! unparsable request line or header (400). This listener wraps each connection so that those
//! automatic answers are rewritten into the API's one error shape, `{"error": {...}}`.
//!
//! An automatic answer is recognised by what only hyper writes: an HTTP/1 4xx head with
//! `content-length: 0`, no `content-type` and no body, written on its own (every error the
//! application itself returns has a JSON body, see [`super::error::json_errors`]). It is
//! written at the start of a write because hyper only sends it when no response is in progress.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::StatusCode;
use axum::serve::Listener;
use dataminer_wire::ErrorBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::error::code_for;

/// A [`TcpListener`] whose connections answer protocol-level errors in the one error shape.
#[derive(Debug)]
pub struct JsonErrorListener(pub TcpListener);

impl Listener for JsonErrorListener {
    type Io = JsonErrorIo<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = Listener::accept(&mut self.0).await;
        (JsonErrorIo { inner: io, pending: Vec::new(), written: 0 }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection whose writes pass through, except hyper's automatic error answers, which are
/// replaced (the replacement is queued in `pending` and written before anything else).
#[derive(Debug)]
pub struct JsonErrorIo<S> {
    inner: S,
    pending: Vec<u8>,
    written: usize,
}

impl<S: AsyncWrite + Unpin> JsonErrorIo<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrorIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrorIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        let Some(replacement) = rewrite(buf) else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        this.pending = replacement;
        // The caller's bytes are "written" (replaced); what is left of the replacement goes
        // out on the next write, flush or shutdown.
        match this.poll_drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then hands over each response head in one flat buffer, which is
    // what `rewrite` inspects.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// hyper's automatic answer with a JSON body instead of none; `None` for anything else.
fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(buf).ok()?;
    // A head on its own: nothing after the blank line.
    let head = head.strip_suffix("\r\n\r\n")?;
    if head.contains("\r\n\r\n") {
        return None;
    }
    let rest = head.strip_prefix("HTTP/1.1 ").or_else(|| head.strip_prefix("HTTP/1.0 "))?;
    let status = StatusCode::from_u16(rest.get(..3)?.parse().ok()?).ok()?;
    if !status.is_client_error() {
        return None;
    }
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut headers = Vec::new();
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" | "transfer-encoding" => return None,
            "content-length" => empty = value.trim() == "0",
            _ => headers.push(line),
        }
    }
    if !empty {
        return None;
    }
    let message = match status {
        StatusCode::URI_TOO_LONG => "the request target (path and query) is longer than 65534 bytes",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "the request headers are too large or too many (at most 100)",
        StatusCode::BAD_REQUEST => "malformed HTTP request",
        s => s.canonical_reason().unwrap_or("request refused"),
    };
    let body = serde_json::to_string(&ErrorBody::new(code_for(status), message)).ok()?;
    let mut out = format!("{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len());
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn hypers_automatic_answers_get_a_json_body() {
        let head = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(head).expect("rewritten")).expect("utf-8");
        let (head, body) = out.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-type: application/json\r\n"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())), "{head}");
        assert!(head.contains("\r\ndate: "), "other headers are kept: {head}");
        let parsed: dataminer_wire::ErrorBody = serde_json::from_str(body).expect("error body");
        assert_eq!(parsed.error.code, "uri_too_long");
    }

    #[test]
    fn application_answers_pass_through() {
        for buf in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",
        ] {
            assert!(rewrite(buf).is_none(), "{}", String::from_utf8_lossy(buf));
        }
    }
}

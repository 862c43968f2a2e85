//! The Unix socket of the local API: `<data_dir>/node.sock`, JSON lines.
//!
//! Binding refuses to take over a socket another node still answers on (two nodes on one
//! data directory would share one identity); a socket file left by a node that died is
//! replaced. Each connection may send any number of requests; a line longer than
//! [`MAX_REQUEST_BYTES`] or that is not a known request gets an error answer and the
//! connection is closed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{Request, Response};

/// The socket's file name in the data directory.
pub const SOCKET_NAME: &str = "node.sock";

/// Longest request line accepted.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// Longest answer a client reads (a status of a full cell is well under this).
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// How long a client waits for an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// The socket's file while the node serves on it: removed when this is dropped, however
/// the node stops (an error after the bind leaves no stale socket behind).
pub struct SocketFile {
    path: PathBuf,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `<data_dir>/node.sock` (mode 0600).
pub fn bind(data_dir: &Path) -> anyhow::Result<(UnixListener, SocketFile)> {
    let path = socket_path(data_dir);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            bail!(
                "another node is running on {} (its API socket {} answers)",
                data_dir.display(),
                path.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    let file = SocketFile { path: path.clone() };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
    Ok((listener, file))
}

/// What answers requests.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl std::future::Future<Output = Response> + Send;
}

/// Accepts connections until the listener fails; each connection runs in its own task.
pub async fn serve<H: Handler>(listener: UnixListener, handler: Arc<H>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, handler).await {
                        tracing::debug!(error = %e, "local API connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "local API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection<H: Handler>(stream: UnixStream, handler: Arc<H>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = AsyncBufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_REQUEST_BYTES + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let (response, keep_going) = match parse_request(&line) {
            Ok(request) => (handler.handle(request).await, true),
            Err(e) => (Response::Error(e), false),
        };
        let mut text = serde_json::to_string(&response)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode the answer: {e}\"}}"));
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
        if !keep_going {
            return Ok(());
        }
    }
}

fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() as u64 > MAX_REQUEST_BYTES || !line.ends_with(b"\n") {
        return Err(format!(
            "request line over {MAX_REQUEST_BYTES} bytes or not ended by a newline"
        ));
    }
    serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))
}

/// Sends one request to the node on `data_dir` and waits for its answer (blocking; for the
/// CLI).
pub fn ask(data_dir: &Path, request: &Request) -> anyhow::Result<Response> {
    let path = socket_path(data_dir);
    let stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "no node answers on {} (is `novacron node --data-dir {}` running?)",
            path.display(),
            data_dir.display()
        )
    })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    (&stream).write_all(text.as_bytes())?;
    let mut reader = BufReader::new(std::io::Read::take(&stream, MAX_RESPONSE_BYTES));
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .with_context(|| format!("no answer from {}", path.display()))?;
    if line.is_empty() {
        bail!("the node closed {} without answering", path.display());
    }
    serde_json::from_str(&line)
        .with_context(|| format!("unreadable answer from {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Handler for Echo {
        async fn handle(&self, request: Request) -> Response {
            Response::Error(format!("asked {request:?}"))
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn requests_are_answered_and_garbage_gets_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let (listener, file) = rt.block_on(async { bind(dir.path()) }).unwrap();
        rt.spawn(serve(listener, Arc::new(Echo)));
        let answer = ask(dir.path(), &Request::Status).unwrap();
        assert_eq!(answer, Response::Error("asked Status".into()));

        let mut raw = std::os::unix::net::UnixStream::connect(socket_path(dir.path())).unwrap();
        raw.write_all(b"{\"op\":\"format_disk\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&raw).read_line(&mut line).unwrap();
        assert!(
            line.contains("bad request") && line.contains("format_disk"),
            "{line}"
        );

        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(file);
        assert!(
            !socket_path(dir.path()).exists(),
            "the socket file goes with the node"
        );
    }

    #[test]
    fn a_second_node_on_the_same_directory_is_refused_and_a_stale_socket_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let (listener, file) = rt.block_on(async { bind(dir.path()) }).unwrap();
        rt.spawn(serve(listener, Arc::new(Echo)));
        let err = rt.block_on(async { bind(dir.path()) }).err().unwrap();
        assert!(err.to_string().contains("another node is running"), "{err}");
        assert!(
            socket_path(dir.path()).exists(),
            "the refused node took nothing"
        );
        // The node dies without cleaning up (kill -9).
        std::mem::forget(file);
        drop(rt);

        // The serving runtime is gone: the socket file stays but nobody answers.
        assert!(socket_path(dir.path()).exists());
        let rt = runtime();
        rt.block_on(async { bind(dir.path()) }).unwrap();
    }

    #[test]
    fn asking_a_directory_without_a_node_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let err = ask(dir.path(), &Request::Status).unwrap_err();
        assert!(err.to_string().contains("node.sock"), "{err}");
    }
}

//! A small, blocking Chrome DevTools Protocol (CDP) client for driving headless
//! Chromium: the dashboard's browser tests and `novacron bench dashboard` use it.
//!
//! [`Browser::launch`] starts a private headless Chromium (fresh temporary
//! profile, its own process group), opens a new page target and talks to it
//! over a synchronous WebSocket. One command is in flight at a time: a request
//! is sent and messages are read until the response with the same id arrives;
//! events seen meanwhile are recorded (network requests, console errors,
//! uncaught exceptions, load events). Every read has a deadline (30 s by
//! default), so no call can hang forever; a missed deadline is
//! [`BrowserError::Timeout`] naming the method.
//!
//! Dropping the [`Browser`] closes the sockets, asks Chromium to exit, then
//! SIGKILLs its whole process group, reaps the child and removes the
//! temporary profile directory.
//!
//! The Chromium binary is taken from `$NOVACRON_CHROMIUM`, else
//! `/usr/bin/chromium`, else `chromium` on `PATH`. When none can be found,
//! [`BrowserError::Missing`] is returned so callers can skip browser tests.
//!
//! Unix only (process groups, signals). Dependencies: `tungstenite`,
//! `serde_json`, `thiserror`, `base64`, `libc`.
//!
//! ```ignore
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut b = novacron_node::bench::browser::Browser::launch()?;
//! b.goto("http://127.0.0.1:8080/")?;
//! assert!(b.wait_for("document.querySelector('#app') !== null", std::time::Duration::from_secs(5))?);
//! let title = b.eval("document.title")?;
//! b.screenshot(std::path::Path::new("/tmp/shot.png"))?;
//! # let _ = title; Ok(()) }
//! ```

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{HandshakeError, Message, WebSocket};

/// Deadline for a single protocol command (and for `goto`'s load event).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for Chromium to print its DevTools URL.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval of [`Browser::wait_for`].
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Largest WebSocket message accepted (full-page screenshots can be big).
const MAX_MESSAGE: usize = 512 << 20;
/// Environment variable naming the Chromium binary.
const CHROMIUM_ENV: &str = "NOVACRON_CHROMIUM";

/// Everything that can go wrong while driving the browser.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// No Chromium binary could be found; callers may skip browser tests.
    #[error("chromium not found: {0}")]
    Missing(String),
    /// Chromium was found but did not start properly.
    #[error("chromium failed to start: {0}")]
    Launch(String),
    /// A deadline passed; the payload names what was waited for.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// An I/O error outside the WebSocket (spawning, files, connecting).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A WebSocket-level error.
    #[error("websocket error: {0}")]
    WebSocket(#[from] Box<tungstenite::Error>),
    /// The DevTools connection was closed (usually: Chromium died).
    #[error("devtools connection closed")]
    Closed,
    /// The browser answered a command with an error.
    #[error("{method} failed: {message}")]
    Protocol { method: String, message: String },
    /// `Page.navigate` reported an error (e.g. `net::ERR_CONNECTION_REFUSED`).
    #[error("navigation to {url} failed: {error}")]
    Navigation { url: String, error: String },
    /// The evaluated JavaScript threw; the payload is the exception text.
    #[error("javascript exception: {0}")]
    Js(String),
    /// The browser sent something this client does not understand.
    #[error("unexpected response: {0}")]
    BadResponse(String),
}

type Ws = WebSocket<TcpStream>;

/// A headless Chromium with one page, driven over CDP. See the module docs.
pub struct Browser {
    /// WebSocket of the page target.
    ws: Ws,
    /// WebSocket of the browser target (kept to send `Browser.close`).
    browser_ws: Option<Ws>,
    next_id: u64,
    /// Every request URL seen in `Network.requestWillBeSent`.
    requests: Vec<String>,
    /// Console errors and uncaught exceptions.
    errors: Vec<String>,
    /// Loader ids whose `load` lifecycle event was seen.
    loaded_loaders: HashSet<String>,
    /// Count of `Page.loadEventFired` events seen.
    load_events: u64,
    /// Dropped last: kills the process group, reaps, removes the profile.
    process: ChromiumProcess,
}

impl Browser {
    /// Starts headless Chromium (path from env `NOVACRON_CHROMIUM`, else
    /// `/usr/bin/chromium`, else `chromium` on `PATH`). When no binary is
    /// found the error is [`BrowserError::Missing`], so callers can skip.
    pub fn launch() -> Result<Browser, BrowserError> {
        let path = match std::env::var_os(CHROMIUM_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                let default = Path::new("/usr/bin/chromium");
                if default.exists() {
                    default.to_path_buf()
                } else {
                    PathBuf::from("chromium")
                }
            }
        };
        Browser::launch_with(&path)
    }

    /// Starts headless Chromium from an explicit binary path (a bare name is
    /// looked up on `PATH`).
    pub fn launch_with(chromium: &Path) -> Result<Browser, BrowserError> {
        if chromium.components().count() > 1 && !chromium.exists() {
            return Err(BrowserError::Missing(format!(
                "{} does not exist",
                chromium.display()
            )));
        }
        let profile = unique_temp_dir()?;
        let mut cmd = Command::new(chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--remote-debugging-port=0", "about:blank"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&profile);
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                        BrowserError::Missing(format!("{}: {e}", chromium.display()))
                    }
                    _ => BrowserError::Launch(format!("spawning {}: {e}", chromium.display())),
                });
            }
        };
        let stderr = child.stderr.take();
        let pgid = i32::try_from(child.id())
            .map_err(|_| BrowserError::Launch("child pid out of range".into()))?;
        // From here on, `process` cleans up on every error path.
        let process = ChromiumProcess {
            child,
            pgid,
            profile,
        };

        let stderr = stderr.ok_or_else(|| BrowserError::Launch("no stderr pipe".into()))?;
        let browser_url = wait_for_devtools_url(stderr)?;

        let deadline = Instant::now() + CALL_TIMEOUT;
        let host = host_port(&browser_url)?;
        let mut browser_ws = connect_ws(&browser_url, deadline)?;
        let target = call_on(
            &mut browser_ws,
            1,
            "Target.createTarget",
            json!({"url": "about:blank"}),
            deadline,
        )?;
        let target_id = target
            .get("targetId")
            .and_then(Value::as_str)
            .ok_or_else(|| BrowserError::BadResponse(format!("Target.createTarget: {target}")))?;
        let page_url = format!("ws://{host}/devtools/page/{target_id}");
        let ws = connect_ws(&page_url, deadline)?;

        let mut browser = Browser {
            ws,
            browser_ws: Some(browser_ws),
            next_id: 1,
            requests: Vec::new(),
            errors: Vec::new(),
            loaded_loaders: HashSet::new(),
            load_events: 0,
            process,
        };
        browser.call("Page.enable", json!({}))?;
        browser.call("Page.setLifecycleEventsEnabled", json!({"enabled": true}))?;
        browser.call("Runtime.enable", json!({}))?;
        browser.call("Network.enable", json!({}))?;
        Ok(browser)
    }

    /// Id of Chromium's process group (equal to the launched child's pid).
    pub fn process_group_id(&self) -> i32 {
        self.process.pgid
    }

    /// The temporary profile directory (removed when the browser is dropped).
    pub fn user_data_dir(&self) -> &Path {
        &self.process.profile
    }

    /// Navigates and waits for the load event (timeout 30 s).
    pub fn goto(&mut self, url: &str) -> Result<(), BrowserError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        let res = self.call_until("Page.navigate", json!({"url": url}), deadline)?;
        if let Some(err) = res
            .get("errorText")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
        {
            return Err(BrowserError::Navigation {
                url: url.to_string(),
                error: err.to_string(),
            });
        }
        // Without a loaderId it was a same-document navigation: no load event.
        let Some(loader) = res
            .get("loaderId")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return Ok(());
        };
        // The lifecycle `load` event for this loader may already have arrived
        // (events can precede the navigate response). `Page.loadEventFired`
        // after the navigate was sent is accepted as a fallback.
        let loads_at_response = self.load_events;
        loop {
            if self.loaded_loaders.contains(&loader) || self.load_events > loads_at_response {
                return Ok(());
            }
            self.read_message(deadline, "Page.loadEventFired")?;
        }
    }

    /// Evaluates a JS expression (awaitPromise, returnByValue) and returns
    /// its value. `undefined` and non-serializable values become `null`;
    /// `NaN`, `Infinity`, `-0` and BigInts become strings. A thrown
    /// exception is [`BrowserError::Js`] with its text.
    pub fn eval(&mut self, expr: &str) -> Result<Value, BrowserError> {
        self.eval_until(expr, Instant::now() + CALL_TIMEOUT)
    }

    fn eval_until(&mut self, expr: &str, deadline: Instant) -> Result<Value, BrowserError> {
        let params = json!({"expression": expr, "awaitPromise": true, "returnByValue": true});
        let res = self.call_until("Runtime.evaluate", params, deadline)?;
        if let Some(ex) = res.get("exceptionDetails") {
            return Err(BrowserError::Js(exception_text(ex)));
        }
        let obj = res
            .get("result")
            .ok_or_else(|| BrowserError::BadResponse(format!("Runtime.evaluate: {res}")))?;
        if let Some(v) = obj.get("value") {
            return Ok(v.clone());
        }
        if let Some(u) = obj.get("unserializableValue").and_then(Value::as_str) {
            return Ok(Value::String(u.to_string()));
        }
        Ok(Value::Null)
    }

    /// Polls `eval(predicate)` every 20 ms until it is JSON `true` or
    /// `timeout` passes; `Ok(true)` / `Ok(false)`. Exceptions thrown by the
    /// predicate (and evaluation failures during navigation) count as "not
    /// yet", except a `SyntaxError`, which is returned at once.
    pub fn wait_for(&mut self, predicate: &str, timeout: Duration) -> Result<bool, BrowserError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            let call_deadline =
                (now + CALL_TIMEOUT).min(deadline.max(now + Duration::from_secs(1)));
            match self.eval_until(predicate, call_deadline) {
                Ok(Value::Bool(true)) => return Ok(true),
                Ok(_) => {}
                Err(BrowserError::Js(msg)) if msg.starts_with("SyntaxError") => {
                    return Err(BrowserError::Js(msg));
                }
                Err(BrowserError::Js(_)) | Err(BrowserError::Protocol { .. }) => {}
                Err(BrowserError::Timeout(_)) if Instant::now() >= deadline => return Ok(false),
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }

    /// Sets the viewport size in CSS pixels (device scale factor 1); `mobile`
    /// turns on mobile layout (meta viewport) and touch emulation.
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) -> Result<(), BrowserError> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )?;
        self.call(
            "Emulation.setTouchEmulationEnabled",
            json!({"enabled": mobile}),
        )?;
        Ok(())
    }

    /// Emulates `prefers-color-scheme` (`"dark"`, `"light"`, or `""` to reset).
    pub fn color_scheme(&mut self, scheme: &str) -> Result<(), BrowserError> {
        self.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        )?;
        Ok(())
    }

    /// Full-page PNG screenshot written to `path` (parent dirs created).
    pub fn screenshot(&mut self, path: &Path) -> Result<(), BrowserError> {
        use base64::Engine as _;
        let metrics = self.call("Page.getLayoutMetrics", json!({}))?;
        let size = metrics
            .get("cssContentSize")
            .or_else(|| metrics.get("contentSize"))
            .ok_or_else(|| {
                BrowserError::BadResponse(format!("Page.getLayoutMetrics: {metrics}"))
            })?;
        let dim = |k: &str| {
            size.get(k)
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
                .ceil()
                .max(1.0)
        };
        let params = json!({
            "format": "png",
            "captureBeyondViewport": true,
            "clip": {"x": 0, "y": 0, "width": dim("width"), "height": dim("height"), "scale": 1},
        });
        let res = self.call("Page.captureScreenshot", params)?;
        let data = res
            .get("data")
            .and_then(Value::as_str)
            .ok_or_else(|| BrowserError::BadResponse("Page.captureScreenshot: no data".into()))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| BrowserError::BadResponse(format!("screenshot base64: {e}")))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Every request URL the page made since launch, in order (including
    /// redirects and `data:` URLs). Events already waiting on the socket are
    /// taken into account.
    pub fn requested_urls(&mut self) -> Vec<String> {
        self.drain_events();
        self.requests.clone()
    }

    /// Console errors (`console.error`, failed `console.assert`) and uncaught
    /// exceptions seen since launch. Events already waiting on the socket are
    /// taken into account.
    pub fn page_errors(&mut self) -> Vec<String> {
        self.drain_events();
        self.errors.clone()
    }

    /// Sends a command with the default deadline and returns its `result`.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.call_until(method, params, Instant::now() + CALL_TIMEOUT)
    }

    fn call_until(
        &mut self,
        method: &str,
        params: Value,
        deadline: Instant,
    ) -> Result<Value, BrowserError> {
        self.next_id += 1;
        let id = self.next_id;
        send_json(
            &mut self.ws,
            &json!({"id": id, "method": method, "params": params}),
            deadline,
            method,
        )?;
        loop {
            let msg = self.read_message(deadline, method)?;
            if msg.get("id").and_then(Value::as_u64) == Some(id) {
                return response_result(method, msg);
            }
        }
    }

    /// Reads one message (recording it if it is an event) and returns it.
    fn read_message(&mut self, deadline: Instant, what: &str) -> Result<Value, BrowserError> {
        let msg = read_json(&mut self.ws, deadline, what)?;
        self.record_event(&msg);
        Ok(msg)
    }

    /// Processes the events already buffered on the socket without blocking.
    fn drain_events(&mut self) {
        if self.ws.get_ref().set_nonblocking(true).is_err() {
            return;
        }
        // Stops at WouldBlock (nothing buffered) or any error.
        while let Ok(m) = self.ws.read() {
            if let Some(v) = message_json(m) {
                self.record_event(&v);
            }
        }
        let _ = self.ws.get_ref().set_nonblocking(false);
    }

    fn record_event(&mut self, msg: &Value) {
        let Some(method) = msg.get("method").and_then(Value::as_str) else {
            return;
        };
        let params = msg.get("params").unwrap_or(&Value::Null);
        match method {
            "Page.loadEventFired" => self.load_events += 1,
            "Page.lifecycleEvent" if params.get("name").and_then(Value::as_str) == Some("load") => {
                if let Some(l) = params.get("loaderId").and_then(Value::as_str) {
                    self.loaded_loaders.insert(l.to_string());
                }
            }
            "Network.requestWillBeSent" => {
                if let Some(u) = params.pointer("/request/url").and_then(Value::as_str) {
                    self.requests.push(u.to_string());
                }
            }
            "Runtime.consoleAPICalled" => {
                let kind = params.get("type").and_then(Value::as_str).unwrap_or("");
                if kind == "error" || kind == "assert" {
                    let args = params.get("args").and_then(Value::as_array);
                    let text = args
                        .map(|a| {
                            a.iter()
                                .map(remote_object_text)
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    self.errors.push(format!("console.{kind}: {text}"));
                }
            }
            "Runtime.exceptionThrown" => {
                if let Some(ex) = params.get("exceptionDetails") {
                    let mut text = exception_text(ex);
                    if let Some(url) = ex
                        .get("url")
                        .and_then(Value::as_str)
                        .filter(|u| !u.is_empty())
                    {
                        let line = ex.get("lineNumber").and_then(Value::as_u64).unwrap_or(0) + 1;
                        text = format!("{text} ({url}:{line})");
                    }
                    self.errors.push(format!("uncaught: {text}"));
                }
            }
            _ => {}
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Best effort, never blocking for long: the process guard kills
        // whatever is left afterwards.
        let short = Instant::now() + Duration::from_millis(500);
        let _ = self
            .ws
            .get_ref()
            .set_write_timeout(Some(Duration::from_millis(500)));
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
        let close_sent = self.browser_ws.as_mut().is_some_and(|bws| {
            send_json(
                bws,
                &json!({"id": 2, "method": "Browser.close"}),
                short,
                "Browser.close",
            )
            .is_ok()
        });
        if close_sent {
            // Give Chromium a moment to exit by itself. The child is not
            // reaped here, so its pid (= the group id) cannot be reused
            // before the process guard signals the group.
            let until = Instant::now() + Duration::from_secs(1);
            while group_has_live_process(self.process.pgid) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Owns the Chromium child: on drop, SIGKILLs its process group, reaps it,
/// waits (briefly) for the rest of the group to die and removes the profile.
struct ChromiumProcess {
    child: Child,
    pgid: i32,
    profile: PathBuf,
}

impl Drop for ChromiumProcess {
    fn drop(&mut self) {
        if self.pgid > 0 {
            // SAFETY: plain syscall; a negative pid addresses the process group
            // created by `process_group(0)` for this child only.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Grandchildren are not ours to reap; wait until they are gone (or
        // zombies) so the profile directory is no longer written to.
        let until = Instant::now() + Duration::from_secs(5);
        while group_has_live_process(self.pgid) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..5 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// True when a non-zombie process of group `pgid` exists (reads /proc; where
/// /proc is unavailable, falls back to `kill(-pgid, 0)`).
fn group_has_live_process(pgid: i32) -> bool {
    if pgid <= 0 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        // SAFETY: signal 0 only checks for existence.
        return unsafe { libc::kill(-pgid, 0) } == 0;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Format: pid (comm) state ppid pgrp ...; comm may contain spaces.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let pgrp = fields.nth(1).and_then(|s| s.parse::<i32>().ok());
        if pgrp == Some(pgid) && state != "Z" && state != "X" {
            return true;
        }
    }
    false
}

/// A fresh, empty directory under the system temp dir.
fn unique_temp_dir() -> Result<PathBuf, BrowserError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("cdp-chromium-{}-{nanos}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Reads Chromium's stderr until the `DevTools listening on ws://...` line.
/// A thread keeps draining stderr afterwards so Chromium never blocks on it.
fn wait_for_devtools_url(stderr: std::process::ChildStderr) -> Result<String, BrowserError> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::Builder::new()
        .name("chromium-stderr".into())
        .spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            let mut forward = true;
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if forward
                            && tx
                                .send(String::from_utf8_lossy(&line).trim_end().to_string())
                                .is_err()
                        {
                            forward = false;
                        }
                    }
                }
            }
        })?;
    let deadline = Instant::now() + LAUNCH_TIMEOUT;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(remaining) {
            Ok(line) => {
                if let Some(i) = line.find("DevTools listening on ") {
                    let url = line[i + "DevTools listening on ".len()..].trim();
                    if url.starts_with("ws://") {
                        return Ok(url.to_string());
                    }
                }
                seen.push(line);
                if seen.len() > 20 {
                    seen.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(BrowserError::Timeout(format!(
                    "chromium DevTools URL on stderr (last output: {})",
                    seen.join(" | ")
                )));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(BrowserError::Launch(format!(
                    "chromium exited before printing its DevTools URL: {}",
                    seen.join(" | ")
                )));
            }
        }
    }
}

/// `host:port` of a `ws://host:port/...` URL.
fn host_port(url: &str) -> Result<String, BrowserError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| BrowserError::BadResponse(format!("not a ws:// URL: {url}")))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(BrowserError::BadResponse(format!("no host in {url}")));
    }
    Ok(host.to_string())
}

fn remaining(deadline: Instant, what: &str) -> Result<Duration, BrowserError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(BrowserError::Timeout(what.to_string()));
    }
    Ok(left.max(Duration::from_millis(1)))
}

/// Opens a WebSocket to a DevTools URL, all within `deadline`.
fn connect_ws(url: &str, deadline: Instant) -> Result<Ws, BrowserError> {
    let what = format!("connecting to {url}");
    let host = host_port(url)?;
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| BrowserError::BadResponse(format!("cannot resolve {host}")))?;
    let stream = TcpStream::connect_timeout(&addr, remaining(deadline, &what)?)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(remaining(deadline, &what)?))?;
    stream.set_write_timeout(Some(remaining(deadline, &what)?))?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let mut attempt = tungstenite::client::client_with_config(url, stream, Some(config));
    loop {
        match attempt {
            Ok((ws, _response)) => return Ok(ws),
            Err(HandshakeError::Failure(e)) => return Err(map_ws_error(e, &what)),
            Err(HandshakeError::Interrupted(mid)) => {
                remaining(deadline, &what)?;
                attempt = mid.handshake();
            }
        }
    }
}

fn map_ws_error(e: tungstenite::Error, what: &str) -> BrowserError {
    use std::io::ErrorKind as K;
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            BrowserError::Closed
        }
        tungstenite::Error::Io(io) => match io.kind() {
            K::WouldBlock | K::TimedOut => BrowserError::Timeout(what.to_string()),
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                BrowserError::Closed
            }
            _ => BrowserError::Io(io),
        },
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => BrowserError::Closed,
        other => BrowserError::WebSocket(Box::new(other)),
    }
}

fn send_json(ws: &mut Ws, msg: &Value, deadline: Instant, what: &str) -> Result<(), BrowserError> {
    ws.get_ref()
        .set_write_timeout(Some(remaining(deadline, what)?))?;
    ws.send(Message::text(msg.to_string()))
        .map_err(|e| map_ws_error(e, what))
}

/// Reads the next JSON message, waiting at most until `deadline`.
fn read_json(ws: &mut Ws, deadline: Instant, what: &str) -> Result<Value, BrowserError> {
    loop {
        ws.get_ref()
            .set_read_timeout(Some(remaining(deadline, what)?))?;
        match ws.read() {
            Ok(Message::Close(_)) => return Err(BrowserError::Closed),
            Ok(m) => {
                if let Some(v) = message_json(m) {
                    return Ok(v);
                }
            }
            Err(tungstenite::Error::Io(io))
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && Instant::now() < deadline =>
            {
                // Spurious early wake-up; loop re-arms the timeout.
            }
            Err(e) => return Err(map_ws_error(e, what)),
        }
    }
}

/// Parses a text/binary frame as JSON; other frames (ping/pong) give None.
/// Unparsable frames are ignored rather than trusted.
fn message_json(m: Message) -> Option<Value> {
    match m {
        Message::Text(t) => serde_json::from_str(t.as_str()).ok(),
        Message::Binary(b) => serde_json::from_slice(&b).ok(),
        _ => None,
    }
}

fn response_result(method: &str, msg: Value) -> Result<Value, BrowserError> {
    if let Some(err) = msg.get("error") {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        let data = err
            .get("data")
            .and_then(Value::as_str)
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        return Err(BrowserError::Protocol {
            method: method.to_string(),
            message: format!("{message}{data}"),
        });
    }
    match msg {
        Value::Object(mut o) => Ok(o.remove("result").unwrap_or(Value::Null)),
        other => Err(BrowserError::BadResponse(format!("{method}: {other}"))),
    }
}

/// One-shot command on a fresh socket (used on the browser target at launch).
fn call_on(
    ws: &mut Ws,
    id: u64,
    method: &str,
    params: Value,
    deadline: Instant,
) -> Result<Value, BrowserError> {
    send_json(
        ws,
        &json!({"id": id, "method": method, "params": params}),
        deadline,
        method,
    )?;
    loop {
        let msg = read_json(ws, deadline, method)?;
        if msg.get("id").and_then(Value::as_u64) == Some(id) {
            return response_result(method, msg);
        }
    }
}

/// Human-readable text of a CDP `ExceptionDetails`.
fn exception_text(ex: &Value) -> String {
    let text = ex
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or("exception");
    match ex.get("exception") {
        Some(obj) => {
            if let Some(d) = obj.get("description").and_then(Value::as_str) {
                d.to_string()
            } else if let Some(v) = obj.get("value") {
                format!("{text} {}", value_text(v))
            } else {
                text.to_string()
            }
        }
        None => text.to_string(),
    }
}

/// Text of a console argument (`RemoteObject`).
fn remote_object_text(obj: &Value) -> String {
    if let Some(v) = obj.get("value") {
        return value_text(v);
    }
    for key in ["unserializableValue", "description", "type"] {
        if let Some(s) = obj.get(key).and_then(Value::as_str) {
            return s.to_string();
        }
    }
    String::new()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

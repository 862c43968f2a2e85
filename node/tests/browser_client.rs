//! The headless-Chromium client the dashboard's tests and benchmark use, against a tiny
//! page server: navigation, evaluation, waits, viewport, colour scheme, screenshots, the
//! requests and errors it records, and that nothing of the browser outlives it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "common/browser.rs"]
mod browser;

use browser::launch_or_skip;
use novacron_node::bench::browser::{Browser, BrowserError};

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset=utf-8><meta name=viewport content="width=device-width"><title>CDP test page</title></head>
<body><h1>hello</h1>
<script>
setTimeout(function () {
  var p = document.createElement('p'); p.id = 'x'; p.textContent = 'done';
  document.body.appendChild(p);
}, 200);
console.error('deliberate console error');
</script></body></html>"#;

/// Minimal HTTP server: answers every request with PAGE (favicon: 404).
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" || line == "\n" => break,
                    Ok(_) => {}
                }
            }
            let (status, body) = if request_line.contains("favicon") {
                ("404 Not Found", "")
            } else {
                ("200 OK", PAGE)
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/")
}

/// Non-zombie processes whose process group is `pgid`.
fn live_group_members(pgid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(i) = stat.rfind(')') else { continue };
        let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
        if f.len() > 2 && f[2].parse::<i32>().ok() == Some(pgid) && f[0] != "Z" && f[0] != "X" {
            out.push(stat[..i + 1].to_string());
        }
    }
    out
}

#[test]
fn drives_a_real_page() {
    let url = serve();
    let t0 = Instant::now();
    let Some(mut b) = launch_or_skip(module_path!()) else {
        return;
    };
    eprintln!("launch: {:?}", t0.elapsed());
    let pgid = b.process_group_id();
    assert!(
        !live_group_members(pgid).is_empty(),
        "chromium group should be alive"
    );

    b.goto(&url).expect("goto");
    eprintln!("goto: {:?}", t0.elapsed());
    assert!(b
        .wait_for(
            "document.getElementById('x') !== null",
            Duration::from_secs(10)
        )
        .expect("wait_for"));
    assert!(!b
        .wait_for(
            "document.getElementById('nope') !== null",
            Duration::from_millis(100)
        )
        .expect("wait_for false"));
    assert_eq!(b.eval("document.title").expect("title"), "CDP test page");
    assert_eq!(
        b.eval("document.getElementById('x').textContent")
            .expect("x"),
        "done"
    );
    assert_eq!(b.eval("Promise.resolve(6 * 7)").expect("promise"), 42);
    assert_eq!(
        b.eval("({a: [1, 'b']})").expect("obj"),
        serde_json::json!({"a": [1, "b"]})
    );
    assert_eq!(
        b.eval("undefined").expect("undefined"),
        serde_json::Value::Null
    );

    match b.eval("(() => { throw new Error('boom') })()") {
        Err(BrowserError::Js(msg)) => assert!(msg.contains("boom"), "{msg}"),
        other => panic!("expected Js error, got {other:?}"),
    }
    match b.eval("Promise.reject(new TypeError('nope'))") {
        Err(BrowserError::Js(msg)) => assert!(msg.contains("nope"), "{msg}"),
        other => panic!("expected Js error, got {other:?}"),
    }
    assert!(matches!(
        b.wait_for("this is not js", Duration::from_secs(1)),
        Err(BrowserError::Js(_))
    ));

    let shot = Path::new("/tmp/cdp/shot.png");
    let _ = std::fs::remove_file(shot);
    b.screenshot(shot).expect("screenshot");
    let png = std::fs::read(shot).expect("read shot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    eprintln!("screenshot: {} bytes", png.len());

    b.viewport(390, 844, true).expect("viewport");
    assert_eq!(b.eval("window.innerWidth").expect("innerWidth"), 390);
    let nested = Path::new("/tmp/cdp/shots/nested/mobile.png");
    let _ = std::fs::remove_dir_all("/tmp/cdp/shots");
    b.eval("document.body.style.height = '3000px'")
        .expect("tall");
    b.screenshot(nested).expect("mobile screenshot");
    let png = std::fs::read(nested).expect("read");
    assert!(png.starts_with(b"\x89PNG"));
    let (w, h) = png_size(&png);
    eprintln!("full-page mobile screenshot: {w}x{h}");
    assert_eq!(w, 390);
    assert!(h >= 3000, "not full-page: {h}");

    // A slow predicate outlives wait_for's deadline; its late response must
    // be ignored by the next call.
    let t = Instant::now();
    let slow = "new Promise(r => setTimeout(() => r(true), 1500))";
    assert!(!b
        .wait_for(slow, Duration::from_millis(200))
        .expect("slow wait_for"));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(b.eval("'after'").expect("after"), "after");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(b.eval("'after2'").expect("after2"), "after2");

    assert_eq!(
        b.eval("matchMedia('(prefers-color-scheme: dark)').matches")
            .expect("mm"),
        false
    );
    b.color_scheme("dark").expect("color_scheme");
    assert_eq!(
        b.eval("matchMedia('(prefers-color-scheme: dark)').matches")
            .expect("mm"),
        true
    );

    // A failing page script shows up in page_errors.
    b.eval("setTimeout(() => { throw new Error('async kaboom') }, 0); 1")
        .expect("eval");
    assert!(b
        .wait_for(
            "new Promise(r => setTimeout(() => r(true), 50))",
            Duration::from_secs(5)
        )
        .expect("tick"));
    let errors = b.page_errors();
    eprintln!("page_errors: {errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("deliberate console error")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("async kaboom")),
        "{errors:?}"
    );

    let urls = b.requested_urls();
    eprintln!("requested_urls: {urls:?}");
    assert!(urls.contains(&url), "{urls:?}");
    assert!(
        urls.iter().all(|u| u.starts_with(&url)),
        "page fetched something else: {urls:?}"
    );

    // Navigation errors are reported; the browser stays usable.
    match b.goto("http://127.0.0.1:1/") {
        Err(BrowserError::Navigation { error, .. }) => assert!(error.contains("ERR_"), "{error}"),
        other => panic!("expected navigation error, got {other:?}"),
    }
    b.goto(&format!("{url}#frag")).expect("goto again");
    b.goto(&format!("{url}#other")).expect("same-document goto");
    assert_eq!(b.eval("location.hash").expect("hash"), "#other");

    let profile = b.user_data_dir().to_path_buf();
    assert!(profile.is_dir());
    drop(b);
    eprintln!("dropped: {:?}", t0.elapsed());
    let left = live_group_members(pgid);
    assert!(
        left.is_empty(),
        "chromium processes survived drop: {left:?}"
    );
    assert!(
        !profile.exists(),
        "profile dir not removed: {}",
        profile.display()
    );
}

#[test]
fn missing_binary_is_reported_as_missing() {
    match Browser::launch_with(Path::new("/nonexistent")) {
        Err(BrowserError::Missing(_)) => {}
        Err(e) => panic!("expected Missing, got {e}"),
        Ok(_) => panic!("expected Missing, got a browser"),
    }
    match Browser::launch_with(Path::new("no-such-chromium-binary-xyz")) {
        Err(BrowserError::Missing(_)) => {}
        Err(e) => panic!("expected Missing, got {e}"),
        Ok(_) => panic!("expected Missing, got a browser"),
    }
}

fn png_size(png: &[u8]) -> (u32, u32) {
    let be = |i: usize| u32::from_be_bytes([png[i], png[i + 1], png[i + 2], png[i + 3]]);
    (be(16), be(20))
}

#[test]
fn browser_death_is_an_error_not_a_hang() {
    let Some(mut b) = launch_or_skip(module_path!()) else {
        return;
    };
    let pgid = b.process_group_id();
    assert_eq!(b.eval("1 + 1").expect("eval"), 2);
    let status = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status()
        .expect("kill");
    assert!(status.success());
    let t = Instant::now();
    let err = b.eval("1 + 1").expect_err("browser is dead");
    eprintln!("after kill: {err} ({:?})", t.elapsed());
    assert!(
        matches!(err, BrowserError::Closed | BrowserError::Io(_)),
        "{err:?}"
    );
    assert!(b.goto("about:blank").is_err());
    let profile = b.user_data_dir().to_path_buf();
    drop(b);
    assert!(live_group_members(pgid).is_empty());
    assert!(!profile.exists());
}

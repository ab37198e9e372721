//! Headless Chromium (Debian's `chromium`), driven through the DevTools
//! protocol over `--remote-debugging-pipe`: commands and events are JSON
//! objects, each ended by a NUL byte, on the browser's fds 3 (in) and 4
//! (out). Clicks, wheel turns and key presses are real input events
//! (`Input.dispatch*Event`), hit-tested and delivered by the browser as a
//! person's would be.
//!
//! Used by the timeline test (`tests/blackbox_timeline.rs`) and the
//! timeline part of `cargo xtask bench blackbox` (`examples/bench_blackbox.rs`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Chromium binary: `$CHROMIUM`, else `chromium` on the PATH (Debian's
/// package installs `/usr/bin/chromium`).
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("chromium")).find(|p| p.is_file())
}

/// A running headless Chromium with one page attached.
pub struct Chromium {
    child: Child,
    to_browser: File,
    from_browser: Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    /// Every event the browser sent so far (`method`, `params`, `sessionId`).
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    // Above 4, so that the child's dup2 onto 3 and 4 cannot overwrite one
    // of them before it is copied.
    let high = |fd: i32| -> Result<OwnedFd, String> {
        // SAFETY: fd is ours (just made by pipe2); F_DUPFD_CLOEXEC makes a new one.
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        // SAFETY: closing the original, which nothing else holds.
        unsafe { libc::close(fd) };
        if h < 0 {
            return Err(format!("fcntl: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: h is a fresh fd owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(h) })
    };
    Ok((high(fds[0])?, high(fds[1])?))
}

impl Chromium {
    /// Starts Chromium headless at `width` x `height` CSS pixels and
    /// attaches to a blank page (Page, Runtime, Network and Log enabled).
    pub fn launch(width: u32, height: u32) -> Result<Chromium, String> {
        let exe = find().ok_or("chromium not found (apt-get install chromium, or set CHROMIUM)")?;
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (in_r, in_w) = pipe()?; // browser reads commands from fd 3
        let (out_r, out_w) = pipe()?; // and writes answers to fd 4
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--headless",
            "--remote-debugging-pipe",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--mute-audio",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={width},{height}"));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Chromium refuses to run as root inside its own sandbox.
            cmd.arg("--no-sandbox");
        }
        cmd.arg("about:blank").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let (r, w) = (std::os::fd::AsRawFd::as_raw_fd(&in_r), std::os::fd::AsRawFd::as_raw_fd(&out_w));
        // SAFETY: between fork and exec only dup2 runs, which is
        // async-signal-safe; r and w are open (above 4) in the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        drop((in_r, out_w));
        let (tx, rx) = mpsc::channel();
        let mut reader = File::from(out_r);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 1 << 16];
            loop {
                let n = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..end]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut c = Chromium {
            child,
            to_browser: File::from(in_w),
            from_browser: rx,
            next_id: 1,
            session: None,
            events: Vec::new(),
            _profile: profile,
        };
        let target = c.call_browser("Target.createTarget", json!({"url": "about:blank"}))?;
        let target_id = target["targetId"].as_str().ok_or("no targetId")?.to_string();
        let attached = c.call_browser("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}))?;
        c.session = Some(attached["sessionId"].as_str().ok_or("no sessionId")?.to_string());
        for domain in ["Page", "Runtime", "Network", "Log"] {
            c.call(&format!("{domain}.enable"), json!({}))?;
        }
        c.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )?;
        Ok(c)
    }

    fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s);
        }
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        bytes.push(0);
        self.to_browser.write_all(&bytes).map_err(|e| format!("{method}: the browser is gone ({e})"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.from_browser.recv_timeout(wait) {
                Ok(v) if v["id"].as_u64() == Some(id) => {
                    if let Some(err) = v.get("error") {
                        return Err(format!("{method}: {err}"));
                    }
                    return Ok(v["result"].clone());
                }
                Ok(v) => {
                    if v.get("method").is_some() {
                        self.events.push(v);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Err(format!("{method}: no answer in 60 s")),
                Err(RecvTimeoutError::Disconnected) => return Err(format!("{method}: the browser closed the pipe")),
            }
        }
    }

    /// A browser-level command (no page session).
    pub fn call_browser(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.send(method, params, None)
    }

    /// A command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let s = self.session.clone();
        self.send(method, params, s)
    }

    /// Collects the events that arrived without waiting for an answer.
    pub fn pump(&mut self) {
        while let Ok(v) = self.from_browser.try_recv() {
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Navigates the page to `url` (returns when the navigation is under way).
    pub fn navigate(&mut self, url: &str) -> Result<(), String> {
        let r = self.call("Page.navigate", json!({"url": url}))?;
        match r.get("errorText") {
            Some(e) => Err(format!("navigate to {url}: {e}")),
            None => Ok(()),
        }
    }

    /// The value of a JavaScript expression in the page (JSON-able).
    pub fn eval(&mut self, expr: &str) -> Result<Value, String> {
        let r =
            self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true, "awaitPromise": true}))?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("{expr}: {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `expr` is truthy in the page; its value.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Before the page's document exists, evaluation can fail: retry.
            if let Ok(v) = self.eval(expr) {
                if !(v.is_null() || v == Value::Bool(false) || v == json!(0) || v == json!("")) {
                    return Ok(v);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{expr} not true after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The centre of the first element matching `selector`, in CSS pixels.
    pub fn center_of(&mut self, selector: &str) -> Result<(f64, f64), String> {
        let sel = serde_json::to_string(selector).map_err(|e| e.to_string())?;
        let v = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
             const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; }})()"
        ))?;
        match (v[0].as_f64(), v[1].as_f64()) {
            (Some(x), Some(y)) => Ok((x, y)),
            _ => Err(format!("no element {selector}")),
        }
    }

    /// A left click at (x, y): move, press, release.
    pub fn click(&mut self, x: f64, y: f64) -> Result<(), String> {
        self.call("Input.dispatchMouseEvent", json!({"type": "mouseMoved", "x": x, "y": y}))?;
        for t in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": t, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1}),
            )?;
        }
        Ok(())
    }

    /// Clicks the centre of the first element matching `selector`.
    pub fn click_on(&mut self, selector: &str) -> Result<(), String> {
        let (x, y) = self.center_of(selector)?;
        self.click(x, y)
    }

    /// One turn of the mouse wheel at (x, y) (negative `delta_y`: towards
    /// the user, i.e. zoom in on the timeline).
    pub fn wheel(&mut self, x: f64, y: f64, delta_y: f64) -> Result<(), String> {
        self.call(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseWheel", "x": x, "y": y, "deltaX": 0, "deltaY": delta_y}),
        )
        .map(|_| ())
    }

    /// Types `text` into the focused element, one key press per character.
    pub fn type_text(&mut self, text: &str) -> Result<(), String> {
        for ch in text.chars() {
            let s = ch.to_string();
            self.call("Input.dispatchKeyEvent", json!({"type": "keyDown", "key": s, "text": s, "unmodifiedText": s}))?;
            self.call("Input.dispatchKeyEvent", json!({"type": "keyUp", "key": s}))?;
        }
        Ok(())
    }

    /// A PNG screenshot of the page.
    pub fn screenshot(&mut self) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = r["data"].as_str().ok_or("no screenshot data")?;
        base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| format!("screenshot: {e}"))
    }

    /// The URLs of every request the page started (`Network.requestWillBeSent`).
    pub fn requests(&mut self) -> Vec<String> {
        self.pump();
        self.events
            .iter()
            .filter(|e| e["method"] == "Network.requestWillBeSent")
            .filter_map(|e| e["params"]["request"]["url"].as_str().map(String::from))
            .collect()
    }

    /// JavaScript exceptions and console/log errors the page reported.
    pub fn errors(&mut self) -> Vec<String> {
        self.pump();
        let mut out = Vec::new();
        for e in &self.events {
            match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => out.push(e["params"]["exceptionDetails"].to_string()),
                Some("Log.entryAdded") if e["params"]["entry"]["level"] == "error" => {
                    out.push(e["params"]["entry"]["text"].as_str().unwrap_or("").to_string())
                }
                Some("Runtime.consoleAPICalled") if e["params"]["type"] == "error" => out.push(e["params"].to_string()),
                _ => {}
            }
        }
        out
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.call_browser("Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

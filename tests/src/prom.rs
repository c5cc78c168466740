//! A real Prometheus server for the exporter's tests: Debian's `prometheus` binary (installed
//! by `cargo xtask setup`), started per test with its own config (scraping one target every
//! second), its own TSDB directory and a free loopback port, queried through its HTTP API,
//! and killed (its directory removed) when the guard is dropped, failures included. No
//! system service is used. Also a minimal HTTP/1.0 GET over a `TcpStream`, for both the
//! Prometheus API and netwatch's `/metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::privilege::under_ci;

/// Bound on Prometheus becoming ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one HTTP exchange.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The prometheus binary, or None: a skip locally, a failure under CI.
pub fn require_prometheus() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if under_ci() {
            panic!(
                "the prometheus binary is missing (Debian package `prometheus`); run \
                 `cargo xtask setup`: under CI this is a failure, not a skip"
            );
        }
        eprintln!("skipping: no prometheus binary (run `cargo xtask setup`)");
    }
    found
}

/// A loopback port free now (the kernel's pick; released before returning).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Percent-encodes a query-string value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `target` from `addr` (HTTP/1.0, connection closed by the server): status and body.
pub fn http_get(addr: SocketAddr, target: &str, accept: &str) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        s,
        "GET {target} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading GET {target} from {addr}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no HTTP header end in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, raw[split + 4..].to_vec()))
}

/// One sample of an instant vector: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

/// A Prometheus server scraping one target.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts `bin` scraping `target`'s /metrics every second; returns once it is ready.
    pub fn start(bin: &Path, target: SocketAddr) -> Result<Prometheus> {
        let dir = std::env::temp_dir().join(format!(
            "netwatch-prom-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(dir.join("data"))?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: netwatch\n    static_configs:\n      - targets: \
             ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut p = Prometheus { child, dir, addr };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((200, _)) = http_get(p.addr, "/-/ready", "*/*") {
                return Ok(p);
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!("prometheus exited ({status}) before it was ready");
            }
            if Instant::now() >= deadline {
                bail!(
                    "prometheus not ready within {READY_TIMEOUT:?} on {}",
                    p.addr
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query; Err on an API error (with its message).
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let target = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = http_get(self.addr, &target, "application/json")?;
        let v: Value = serde_json::from_slice(&body)
            .with_context(|| format!("query {promql}: HTTP {status}, not JSON"))?;
        if v["status"] != "success" {
            bail!("query {promql}: {}", v);
        }
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        result
            .iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("query {promql}: no value in {r}"))?;
                Ok(Sample {
                    labels: r["metric"].as_object().cloned().unwrap_or_default(),
                    value,
                })
            })
            .collect()
    }

    /// Queries every 500 ms until `ok` holds for the result (at most `timeout`); the last
    /// result either way, and whether it held.
    pub fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        ok: impl Fn(&[Sample]) -> bool,
    ) -> Result<(Vec<Sample>, bool)> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(promql)?;
            if ok(&r) {
                return Ok((r, true));
            }
            if Instant::now() >= deadline {
                return Ok((r, false));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            super::encode("sum(x{a=\"b\"})"),
            "sum%28x%7Ba%3D%22b%22%7D%29"
        );
    }
}

//! Delivery over HTTPS (rustls on both ends) with `cainfo` naming the CA
//! that signed the server's certificate; without it the server is not
//! trusted and nothing is delivered. And through an HTTP proxy named by
//! `HTTPS_PROXY` (a real CONNECT tunnel on loopback); the OTLP destination
//! over the same transport.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::collector::Collector;
use e2e::fixtures::Records;
use e2e::http::read_request;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use telemetry::Severity;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=telemetrics test CA"],
        ]
        .concat(),
    );
    openssl(dir, &[&["req"], &ec[..], &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
    openssl(dir, &["x509", "-in", "leaf.pem", "-outform", "DER", "-out", "leaf.der"]);
    openssl(dir, &["pkcs8", "-topk8", "-nocrypt", "-in", "leaf.key", "-outform", "DER", "-out", "leaf.key.der"]);
}

/// The headers of each request received.
type Posts = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A one-thread-per-connection HTTPS sink answering 201; keeps each
/// request's headers.
fn tls_sink(dir: &Path) -> (String, Posts) {
    let cert = CertificateDer::from(std::fs::read(dir.join("leaf.der")).unwrap());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(std::fs::read(dir.join("leaf.key.der")).unwrap()));
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}/", l.local_addr().unwrap().port());
    let posts = Arc::new(Mutex::new(Vec::new()));
    let p2 = posts.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (cfg, posts) = (cfg.clone(), p2.clone());
            std::thread::spawn(move || {
                let Ok(sc) = rustls::ServerConnection::new(cfg) else { return };
                let mut rd = BufReader::new(rustls::StreamOwned::new(sc, conn));
                while let Some(request) = read_request(&mut rd) {
                    posts.lock().unwrap().push(request.headers);
                    let w = rd.get_mut();
                    if w.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                        .and_then(|()| w.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, posts)
}

const RECORDS: Records = Records::new("org.test/collector/tls", Severity::Low);

#[test]
fn delivers_over_https_trusting_cainfo_only() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let (url, posts) = tls_sink(certs.path());

    // Without cainfo the test CA is unknown: not delivered, and the status says why.
    let mut untrusted = Collector::new(Some(&url), "");
    untrusted.start();
    untrusted.client().send(&RECORDS.text("over TLS\n")).unwrap();
    let s = untrusted.wait_status(Duration::from_secs(10), |s| s["delivery_failures"].as_u64() > Some(0));
    let err = s["last_delivery_error"].as_str().unwrap_or("").to_lowercase();
    assert!(err.contains("certificate") || err.contains("issuer"), "{s}");
    assert!(posts.lock().unwrap().is_empty());
    drop(untrusted);

    let mut c = Collector::new(Some(&url), &format!("cainfo={}", certs.path().join("ca.pem").display()));
    c.start();
    let mut client = c.client();
    client.send(&RECORDS.text("over TLS\n")).unwrap();
    client.send(&RECORDS.text("over TLS\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while posts.lock().unwrap().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = posts.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "delivered over TLS:\n{}", c.log());
    assert!(got[0].iter().any(|(k, v)| k.eq_ignore_ascii_case("classification") && v == "org.test/collector/tls"));
    let s = c.wait_status(Duration::from_secs(10), |s| s["delivered"] == 2);
    assert_eq!(s["delivered"], 2, "{s}");
}

/// What the proxy saw: each CONNECT request's head.
type Tunnels = Arc<Mutex<Vec<String>>>;

/// An HTTP proxy on loopback that serves CONNECT only: answers 200 and
/// copies bytes both ways, keeping each request head.
fn connect_proxy() -> (u16, Tunnels) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let seen = s2.clone();
            std::thread::spawn(move || {
                let mut rd = BufReader::new(conn);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if rd.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                seen.lock().unwrap().push(head.clone());
                let Some(target) = head.strip_prefix("CONNECT ").and_then(|r| r.split_whitespace().next()) else {
                    return;
                };
                let Ok(up) = std::net::TcpStream::connect(target) else { return };
                let mut client = rd.into_inner();
                if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").is_err() {
                    return;
                }
                let (mut c2, mut u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
                let mut up = up;
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut client, &mut up);
                let _ = up.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, seen)
}

#[test]
fn delivers_through_the_https_proxy_of_the_environment() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let (url, posts) = tls_sink(certs.path());
    let (proxy_port, tunnels) = connect_proxy();
    let mut c = Collector::new(Some(&url), &format!("cainfo={}", certs.path().join("ca.pem").display()));
    c.env.push(("HTTPS_PROXY".into(), format!("http://alice:s3cret@127.0.0.1:{proxy_port}")));
    c.start();
    let mut client = c.client();
    client.send(&RECORDS.text("over TLS\n")).unwrap();
    client.send(&RECORDS.text("over TLS\n")).unwrap();
    let s = c.wait_status(Duration::from_secs(15), |s| s["delivered"] == 2);
    assert_eq!(s["delivered"], 2, "{s}\n{}", c.log());
    assert_eq!(posts.lock().unwrap().len(), 2);
    let seen = tunnels.lock().unwrap().clone();
    let sink_port = url.trim_end_matches('/').rsplit(':').next().unwrap().to_string();
    // Every connection was a tunnel to the sink (one per concurrent post
    // at most); TLS ran through it. alice:s3cret went as basic auth.
    assert!((1..=2).contains(&seen.len()), "{seen:?}");
    for head in &seen {
        assert!(head.starts_with(&format!("CONNECT 127.0.0.1:{sink_port} HTTP/1.1\r\n")), "{seen:?}");
        assert!(head.to_lowercase().contains("proxy-authorization: basic ywxpy2u6cznjcmv0"), "{seen:?}");
    }
    let tunnels_before = seen.len();

    // NO_PROXY naming the server: straight there, the proxy sees nothing new.
    drop(c);
    let mut c = Collector::new(Some(&url), &format!("cainfo={}", certs.path().join("ca.pem").display()));
    c.env.push(("HTTPS_PROXY".into(), format!("http://127.0.0.1:{proxy_port}")));
    c.env.push(("NO_PROXY".into(), "127.0.0.1".into()));
    c.start();
    c.client().send(&RECORDS.text("over TLS\n")).unwrap();
    let s = c.wait_status(Duration::from_secs(15), |s| s["delivered"] == 1);
    assert_eq!(s["delivered"], 1, "{s}\n{}", c.log());
    assert_eq!(tunnels.lock().unwrap().len(), tunnels_before);
}

/// The OTLP destination goes over the same transport: HTTPS trusting
/// `cainfo`, through the environment's proxy, with `otlp_headers`.
#[test]
fn otlp_over_https_through_the_proxy() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let (url, posts) = tls_sink(certs.path());
    let (proxy_port, tunnels) = connect_proxy();
    let mut c = Collector::new(
        None,
        &format!(
            "otlp_endpoint={url}\notlp_headers=Authorization=Bearer%20t0ken\ncainfo={}",
            certs.path().join("ca.pem").display()
        ),
    );
    std::fs::create_dir_all(c.dir.join("etc")).unwrap();
    std::fs::write(c.dir.join("etc/opt-in"), b"").unwrap();
    c.env.push(("HTTPS_PROXY".into(), format!("http://127.0.0.1:{proxy_port}")));
    c.start();
    c.client().send(&RECORDS.text("otlp over TLS\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while posts.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = posts.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "exported over TLS:\n{}", c.log());
    let h = |name: &str| got[0].iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    assert_eq!(h("content-type").as_deref(), Some("application/x-protobuf"));
    assert_eq!(h("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(h("authorization").as_deref(), Some("Bearer t0ken"));
    let t = tunnels.lock().unwrap().clone();
    assert!(t.iter().any(|head| head.starts_with("CONNECT 127.0.0.1:")), "through the proxy: {t:?}");
    let j = c.wait_journal(Duration::from_secs(10), |j| j.iter().any(|e| e["fate"] == "delivered (otlp)"));
    assert_eq!(j[0]["fate"], "delivered (otlp)");
}

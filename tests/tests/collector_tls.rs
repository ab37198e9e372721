//! Delivery over HTTPS (rustls on both ends) with `cainfo` naming the CA
//! that signed the server's certificate; without it the server is not
//! trusted and nothing is delivered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::collector::Collector;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use telemetry::client::Client;
use telemetry::{Classification, Payload, Record, Severity};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(dir, &[&["req", "-x509"], &ec[..], &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=telemetrics test CA"]].concat());
    openssl(dir, &[&["req"], &ec[..], &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(
        dir,
        &["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem", "-days", "1", "-extfile", "ext.cnf"],
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
                loop {
                    let mut line = String::new();
                    if rd.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        if rd.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.push((k.trim().to_string(), v.trim().to_string()));
                        }
                    }
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if rd.read_exact(&mut body).is_err() {
                        return;
                    }
                    posts.lock().unwrap().push(headers);
                    let w = rd.get_mut();
                    if w.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n").and_then(|()| w.flush()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, posts)
}

fn record() -> Record {
    Record::builder(Classification::parse("org.test/collector/tls").unwrap(), Severity::Low, Payload::text("over TLS\n")).build()
}

#[test]
fn delivers_over_https_trusting_cainfo_only() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let (url, posts) = tls_sink(certs.path());

    // Without cainfo the test CA is unknown: not delivered, and the status says why.
    let mut untrusted = Collector::new(Some(&url), "");
    untrusted.start();
    Client::connect_path(&untrusted.socket, Duration::from_secs(10)).unwrap().send(&record()).unwrap();
    let s = untrusted.wait_status(Duration::from_secs(10), |s| s["delivery_failures"].as_u64() > Some(0));
    let err = s["last_delivery_error"].as_str().unwrap_or("").to_lowercase();
    assert!(err.contains("certificate") || err.contains("issuer"), "{s}");
    assert!(posts.lock().unwrap().is_empty());
    drop(untrusted);

    let mut c = Collector::new(Some(&url), &format!("cainfo={}", certs.path().join("ca.pem").display()));
    c.start();
    let mut client = Client::connect_path(&c.socket, Duration::from_secs(10)).unwrap();
    client.send(&record()).unwrap();
    client.send(&record()).unwrap();
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

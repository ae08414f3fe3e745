//! `--metrics-addr`: the `metrics` crate's figures (training and pipeline) in Prometheus'
//! text format, served to any request on a plain TCP listener.
//!
//! Each connection gets its own short-lived thread with read and write timeouts, so a client
//! that connects and says nothing (or reads slowly) cannot stall the other scrapes; at most
//! [`MAX_CONNECTIONS`] are served at once, further ones are closed at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const MAX_CONNECTIONS: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Installs the global metrics recorder and serves it; returns the bound address.
pub fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        eprintln!("warning: metrics are served on {addr}, beyond this machine");
    }
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics-endpoint".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    continue; // dropped: closed
                }
                let (handle, done) = (handle.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-connection".into())
                    .spawn(move || {
                        respond(stream, &handle);
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(bound)
}

fn respond(mut stream: TcpStream, handle: &PrometheusHandle) {
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    // the request itself does not matter: every path gets the metrics
    let mut request = [0u8; 1024];
    let _ = stream.read(&mut request);
    let body = handle.render();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn serves_the_recorded_figures_in_prometheus_text() {
        let addr = super::serve("127.0.0.1:0".parse().unwrap()).unwrap();
        metrics::gauge!("train_loss").set(1.5);
        metrics::counter!("pipeline_samples_decoded").increment(7);
        // a client that connects and says nothing must not hold up the next scrape
        let _idle = TcpStream::connect(addr).unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        // a regression fails here instead of hanging
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("train_loss 1.5"), "{response}");
        assert!(
            response.contains("pipeline_samples_decoded 7"),
            "{response}"
        );
    }
}

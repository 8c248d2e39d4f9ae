//! Connection churn (issue 11 item 5): while the run's clients stay open,
//! `--churn-rate` new SSE streams per second (open loop) each connect, read
//! the response head and the first body bytes, and close. Connect latency
//! is scheduled time → first body bytes read; RSS before and after is the
//! report's `server.rss_kib_connected` / `server.rss_kib_end`.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{report::Latency, sse::new_histogram, target::Target};

/// What the churn streams saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Churn {
    /// Streams scheduled (`--churn-rate` × `--duration`).
    pub scheduled: u64,
    /// Streams that got `200` and their first body bytes.
    pub ok: u64,
    /// Streams refused, failed or timed out.
    pub failed: u64,
    /// Scheduled time → first body bytes, ok streams only.
    pub connect_ms: Latency,
}

/// Opens `rate × duration` short-lived streams spread round-robin over
/// `targets`, each in its own task, bounded by `timeout`.
pub(crate) async fn run(
    targets: &[Arc<Target>],
    rate: f64,
    duration: Duration,
    timeout: Duration,
) -> Churn {
    let scheduled = (rate * duration.as_secs_f64()).round() as u64;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(new_histogram()));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(scheduled as usize);
    for k in 0..scheduled {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let target = targets[k as usize % targets.len()].clone();
        let (ok, failed, latency) = (ok.clone(), failed.clone(), latency.clone());
        tasks.push(tokio::spawn(async move {
            match tokio::time::timeout(timeout, open_one(&target)).await {
                Ok(Ok(())) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    let us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = latency
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(us.max(1));
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let histogram: Histogram<u64> = latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Churn {
        scheduled,
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        connect_ms: Latency::from_us(&histogram),
    }
}

/// One stream: request, `200` head, first body bytes, close.
async fn open_one(target: &Target) -> std::io::Result<()> {
    let mut stream = crate::target::connect(target.addr, None).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        target.path, target.authority
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 200") && !buf.starts_with(b"HTTP/1.0 200") {
                return Err(std::io::Error::other("not 200"));
            }
            if buf.len() > end + 4 {
                return Ok(());
            }
        }
    }
}

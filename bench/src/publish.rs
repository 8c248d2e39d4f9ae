//! The publishing side: open-loop POSTs at a fixed rate, each in its own task,
//! over a small pool of keep-alive HTTP/1 connections per publish URL.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::{client::conn::http1::SendRequest, header, header::HeaderValue, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{sync::Semaphore, time::MissedTickBehavior};
use tokio_util::task::TaskTracker;

use crate::{
    sse::{new_histogram, Shared},
    target::{connect, Target},
    PublishMode,
};

/// Keep-alive connections to one publish URL; at most `size` requests at once.
#[derive(Debug)]
struct Pool {
    target: Target,
    permits: Semaphore,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Pool {
    async fn checkout(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let popped = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some(mut sender) = popped else { break };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let stream = connect(self.target.addr, None)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    fn checkin(&self, sender: SendRequest<Full<Bytes>>) {
        if !sender.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(sender);
        }
    }
}

/// Publishes events `0..total` and records what became of each.
#[derive(Debug)]
pub(crate) struct Publisher {
    pools: Vec<Pool>,
    mode: PublishMode,
    prefix: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    topic_of: Arc<[u32]>,
    /// Per seq: the POST got a 2xx.
    pub accepted: Box<[AtomicBool]>,
    /// POSTs answered 2xx.
    pub ok: AtomicU64,
    /// POSTs that failed (non-2xx, connection error, timeout).
    pub failed: AtomicU64,
    /// Scheduled time → response, µs, for 2xx POSTs (open loop: includes
    /// waiting for a pooled connection).
    pub latency: Mutex<Histogram<u64>>,
    /// Failure reasons and their counts.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// When the last POST finished, ns since `t0`.
    pub last_done_ns: AtomicU64,
}

/// How a run publishes.
#[derive(Debug)]
pub(crate) struct PublishPlan {
    pub targets: Vec<Target>,
    pub connections_per_url: usize,
    pub mode: PublishMode,
    pub prefix: String,
    pub bearer: Option<String>,
    pub timeout: Duration,
    pub total: u64,
    /// Per seq, the topic index of the event (`--topics`); empty without topics.
    pub topic_of: Arc<[u32]>,
}

impl Publisher {
    pub fn new(plan: PublishPlan) -> anyhow::Result<Self> {
        let authorization = plan
            .bearer
            .map(|t| HeaderValue::try_from(format!("Bearer {t}")))
            .transpose()?;
        let total = usize::try_from(plan.total)?;
        Ok(Self {
            pools: plan
                .targets
                .into_iter()
                .map(|target| Pool {
                    target,
                    permits: Semaphore::new(plan.connections_per_url.max(1)),
                    idle: Mutex::new(Vec::new()),
                })
                .collect(),
            mode: plan.mode,
            prefix: plan.prefix,
            authorization,
            timeout: plan.timeout,
            topic_of: plan.topic_of,
            accepted: (0..total).map(|_| AtomicBool::new(false)).collect(),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latency: Mutex::new(new_histogram()),
            errors: Mutex::new(BTreeMap::new()),
            last_done_ns: AtomicU64::new(0),
        })
    }

    /// Sends events `0..accepted.len()` at `rate` per second, open loop
    /// (event `k` is due at `k / rate` s after the start; a late scheduler
    /// catches up in a burst), round-robin over the publish URLs, and returns
    /// once every POST has finished.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>, rate: f64) {
        let total = self.accepted.len() as u64;
        if total == 0 || self.pools.is_empty() {
            return;
        }
        let tracker = TaskTracker::new();
        let mut ticks = tokio::time::interval(Duration::from_secs_f64((1.0 / rate).max(0.001)));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let start = Instant::now();
        let mut next = 0u64;
        while next < total {
            ticks.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
            while next < due {
                let scheduled = start + Duration::from_secs_f64(next as f64 / rate);
                tracker.spawn(self.clone().post(next, scheduled, shared.clone()));
                next += 1;
            }
        }
        tracker.close();
        tracker.wait().await;
    }

    /// The topic name of event `seq` (`t<k>`), if the run has topics.
    fn topic(&self, seq: u64) -> Option<String> {
        let k = self.topic_of.get(usize::try_from(seq).ok()?)?;
        Some(crate::topic_name(*k))
    }

    fn body(&self, seq: u64) -> Bytes {
        let prefix = &self.prefix;
        Bytes::from(match self.mode {
            PublishMode::Accounts => format!(r#"{{"name":"{prefix}{seq}","balance":{seq}}}"#),
            PublishMode::Raw => format!(r#"{{"name":"{prefix}{seq}"}}"#),
            PublishMode::Mercure => form_urlencoded::Serializer::new(String::new())
                .append_pair(
                    "topic",
                    &self.topic(seq).unwrap_or_else(|| "bench".to_owned()),
                )
                .append_pair("data", &format!(r#"{{"name":"{prefix}{seq}"}}"#))
                .finish(),
        })
    }

    fn content_type(&self) -> &'static str {
        match self.mode {
            PublishMode::Accounts | PublishMode::Raw => "application/json",
            PublishMode::Mercure => "application/x-www-form-urlencoded",
        }
    }

    async fn post(self: Arc<Self>, seq: u64, scheduled: Instant, shared: Arc<Shared>) {
        let pool = &self.pools[(seq % self.pools.len() as u64) as usize];
        let result = tokio::time::timeout(self.timeout, self.send(pool, seq, &shared)).await;
        let done = Instant::now();
        let error = match result {
            Ok(Ok(status)) if status.is_success() => None,
            Ok(Ok(status)) => Some(format!("HTTP {}", status.as_u16())),
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("timed out after {} s", self.timeout.as_secs_f64())),
        };
        if let Some(error) = error {
            self.failed.fetch_add(1, Ordering::Relaxed);
            *self
                .errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(error)
                .or_default() += 1;
        } else {
            self.accepted[seq as usize].store(true, Ordering::Relaxed);
            self.ok.fetch_add(1, Ordering::Relaxed);
            let us = u64::try_from(done.saturating_duration_since(scheduled).as_micros())
                .unwrap_or(u64::MAX);
            self.latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .saturating_record(us);
        }
        self.last_done_ns
            .fetch_max(shared.ns(done), Ordering::Relaxed);
    }

    async fn send(&self, pool: &Pool, seq: u64, shared: &Shared) -> Result<StatusCode, String> {
        let _permit = pool.permits.acquire().await.map_err(|e| e.to_string())?;
        let mut sender = pool.checkout().await?;
        let path = pool.target.path_for(self.topic(seq).as_deref());
        let mut request = Request::post(path)
            .header(header::HOST, pool.target.authority.as_str())
            .header(header::CONTENT_TYPE, self.content_type());
        if let Some(auth) = &self.authorization {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let request = request
            .body(Full::new(self.body(seq)))
            .map_err(|e| e.to_string())?;
        shared.send_ns[seq as usize].store(shared.ns(Instant::now()).max(1), Ordering::Relaxed);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("response body: {e}"))?;
        pool.checkin(sender);
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher(mode: PublishMode) -> Publisher {
        publisher_with_topics(mode, Arc::from([]))
    }

    fn publisher_with_topics(mode: PublishMode, topic_of: Arc<[u32]>) -> Publisher {
        Publisher::new(PublishPlan {
            targets: Vec::new(),
            connections_per_url: 1,
            mode,
            prefix: "bench-r-".to_owned(),
            bearer: None,
            timeout: Duration::from_secs(1),
            total: 3,
            topic_of,
        })
        .unwrap()
    }

    #[test]
    fn bodies_carry_the_token() {
        assert_eq!(
            publisher(PublishMode::Accounts).body(7),
            r#"{"name":"bench-r-7","balance":7}"#
        );
        assert_eq!(
            publisher(PublishMode::Raw).body(7),
            r#"{"name":"bench-r-7"}"#
        );
        let p = publisher_with_topics(PublishMode::Mercure, Arc::from([4, 9]));
        assert_eq!(p.topic(1).as_deref(), Some("t9"));
        assert_eq!(
            p.body(1),
            "topic=t9&data=%7B%22name%22%3A%22bench-r-1%22%7D"
        );
        assert_eq!(p.content_type(), "application/x-www-form-urlencoded");
    }
}

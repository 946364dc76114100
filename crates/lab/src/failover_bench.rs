//! `shadowlun bench failover`: what a gateway that cannot be reached costs the provider's calls
//! when its URL comes before a live gateway's. The calls are the provider's lookup (an
//! authenticated `POST /v1/lookup` with a host token) against the real array daemon over
//! HTTPS; the contenders take turns, sample by sample:
//!
//! - warm: a client that has answered before. It stays with the gateway that answered, so a
//!   dead URL before it should cost nothing;
//! - first call of a new client: a refused connection costs a round trip on loopback; a host
//!   that is down (connection requests dropped) costs one connect timeout
//!   ([`provider::https::CONNECT_TIMEOUT`]), once.

use std::time::{Duration, Instant};

use provider::array::ArrayControl;
use provider::https::{CONNECT_TIMEOUT, ClientConfig, HttpsArray};

use crate::real_lab::RealLab;
use crate::report::{Goal, Report, Row, machine};
use crate::unreachable::{black_hole, refused_url};

const HOST: &str = "iqn.1991-05.com.microsoft:bench-failover";

/// How many samples of each contender.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Calls of each warm client.
    pub warm: usize,
    /// New clients of each kind (a host that is down costs a connect timeout each).
    pub cold: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self { warm: 200, cold: 5 }
    }
}

/// (median, (min, max)) of `v`.
fn stats(v: &mut [f64]) -> (f64, (f64, f64)) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], (v[0], v[v.len() - 1]))
}

fn timed(array: &HttpsArray) -> anyhow::Result<Duration> {
    let t = Instant::now();
    array.lookup(&[]).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(t.elapsed())
}

pub fn run(o: &BenchOptions) -> anyhow::Result<Report> {
    let dir = std::env::temp_dir().join(format!("shadowlun-bench-failover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let lab = RealLab::start(dir, false)?;
    let (_, token) = lab.host(HOST).map_err(anyhow::Error::msg)?;
    let refused = refused_url()?;
    let hole = black_hole()?;
    let lists: [Vec<&str>; 3] = [
        vec![&lab.api_url],
        vec![&refused, &lab.api_url],
        vec![&hole.url, &lab.api_url],
    ];
    let client = |urls: &[&str]| {
        HttpsArray::new(ClientConfig::with_urls(urls, &token, &lab.fingerprint))
            .map_err(|e| anyhow::anyhow!("{e}"))
    };

    // First calls of new clients, the contenders in turn.
    let mut cold: [Vec<f64>; 3] = Default::default();
    for _ in 0..o.cold.max(1) {
        for (i, urls) in lists.iter().enumerate() {
            let a = client(urls)?;
            cold[i].push(timed(&a)?.as_secs_f64() * 1e3);
            if a.client().current_url() != lab.api_url {
                anyhow::bail!("{urls:?}: the call was not answered by the live gateway");
            }
        }
    }
    // Warm clients, one call each in turn.
    let warm_clients = lists
        .iter()
        .map(|urls| client(urls))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for a in &warm_clients {
        for _ in 0..3 {
            timed(a)?;
        }
    }
    let mut warm: [Vec<f64>; 3] = Default::default();
    for _ in 0..o.warm.max(1) {
        for (i, a) in warm_clients.iter().enumerate() {
            warm[i].push(timed(a)?.as_secs_f64() * 1e6);
        }
    }
    drop(warm_clients);
    lab.shutdown()?;

    let [c_live, c_refused, c_down] = cold.map(|mut v| stats(&mut v));
    let [w_live, w_refused, w_down] = warm.map(|mut v| stats(&mut v));
    let timeout_ms = CONNECT_TIMEOUT.as_secs_f64() * 1e3;
    let rows = vec![
        Row::new(
            "warm call, refused gateway listed first",
            "µs",
            w_refused.0,
            "warm call, live gateway alone",
            Some(w_live.0),
            Some(Goal::AtMost(1.5)),
        )
        .with_ranges(Some(w_refused.1), Some(w_live.1)),
        Row::new(
            "warm call, gateway whose host is down listed first",
            "µs",
            w_down.0,
            "warm call, live gateway alone",
            Some(w_live.0),
            Some(Goal::AtMost(1.5)),
        )
        .with_ranges(Some(w_down.1), Some(w_live.1)),
        Row::new(
            "first call, refused gateway listed first",
            "ms",
            c_refused.0,
            "first call, live gateway alone",
            Some(c_live.0),
            Some(Goal::AtMost(2.0)),
        )
        .with_ranges(Some(c_refused.1), Some(c_live.1)),
        Row::new(
            "first call, gateway whose host is down listed first",
            "ms",
            c_down.0,
            "one connect timeout + first call, live gateway alone",
            Some(timeout_ms + c_live.0),
            Some(Goal::AtMost(1.1)),
        )
        .with_ranges(Some(c_down.1), None),
    ];
    Ok(Report {
        title: "Failover between gateways: the provider's lookup over HTTPS, a dead gateway listed first"
            .into(),
        machine: machine(),
        rows,
        notes: vec![
            format!(
                "{} warm calls and {} first calls per contender, contenders in turn; median \
                 (min-max); connect timeout {timeout_ms:.0} ms",
                o.warm.max(1),
                o.cold.max(1)
            ),
            format!("black hole at {}: a full listener with no backlog", hole.addr),
        ],
    })
}

//! Durations and the mock provider's latency distributions, as written on the command line.
//!
//! | syntax | meaning |
//! |---|---|
//! | `50ms`, `fixed:50ms` | always 50 ms |
//! | `uniform:20ms..80ms` | uniform between the two |
//! | `lognormal:median=50ms,sigma=0.5` | log-normal with that median; `,max=2s` caps the tail |
//! | `fixed:50ms@98+fixed:700ms@2` | a mixture: each part drawn with its relative weight |
//!
//! Durations take `ns`, `us` (or `µs`), `ms`, `s` or `m`, with decimals (`0.5ms`); a bare `0`
//! is zero.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::{Rng, RngExt};
use rand_distr::Distribution;

/// Parse a duration like `50ms`, `1.5s`, `200us` or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit (use ns, us, ms, s or m, e.g. \"50ms\")"))?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"50ms\""))?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ns, us, ms, s or m)"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 86_400.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration flag that also accepts a bare number of seconds (`30` = `30s`).
pub fn parse_seconds_or_duration(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
        Ok(_) => Err(format!("{s:?} is out of range")),
        Err(_) => parse_duration(s),
    }
}

/// Format a duration the way [`parse_duration`] reads it.
fn show(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us == 0.0 {
        "0ms".into()
    } else if us < 1000.0 {
        format!("{us}us")
    } else if us < 1e6 {
        format!("{}ms", us / 1000.0)
    } else {
        format!("{}s", us / 1e6)
    }
}

/// How long the mock provider takes to answer.
#[derive(Debug, Clone)]
pub enum Latency {
    /// Always the same.
    Fixed(Duration),
    /// Uniform in `[low, high]`.
    Uniform {
        /// Shortest.
        low: Duration,
        /// Longest.
        high: Duration,
    },
    /// Log-normal around a median, optionally capped.
    LogNormal {
        /// The median (`e^mu`).
        median: Duration,
        /// The standard deviation of the underlying normal.
        sigma: f64,
        /// No sample is above this.
        max: Option<Duration>,
        /// The prepared distribution, in seconds.
        dist: rand_distr::LogNormal<f64>,
    },
    /// Each part with its relative weight.
    Mix(Vec<(f64, Latency)>),
}

impl Latency {
    /// Draw one latency.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        match self {
            Latency::Fixed(d) => *d,
            Latency::Uniform { low, high } => {
                if high <= low {
                    *low
                } else {
                    let span = (*high - *low).as_nanos() as u64;
                    *low + Duration::from_nanos(rng.random_range(0..=span))
                }
            }
            Latency::LogNormal { max, dist, .. } => {
                let d = Duration::from_secs_f64(dist.sample(rng).min(86_400.0));
                max.map_or(d, |m| d.min(m))
            }
            Latency::Mix(parts) => {
                let total: f64 = parts.iter().map(|(w, _)| w).sum();
                let mut pick = rng.random::<f64>() * total;
                for (w, part) in parts {
                    if pick < *w {
                        return part.sample(rng);
                    }
                    pick -= w;
                }
                parts.last().map_or(Duration::ZERO, |(_, p)| p.sample(rng))
            }
        }
    }

    fn parse_one(s: &str) -> Result<Latency, String> {
        let (kind, spec) = s.split_once(':').unwrap_or(("fixed", s));
        match kind.trim() {
            "fixed" => Ok(Latency::Fixed(parse_duration(spec)?)),
            "uniform" => {
                let (low, high) = spec.split_once("..").ok_or_else(|| {
                    format!("{s:?}: write uniform:LOW..HIGH, e.g. uniform:20ms..80ms")
                })?;
                let (low, high) = (parse_duration(low)?, parse_duration(high)?);
                if high < low {
                    return Err(format!("{s:?}: the upper bound is below the lower one"));
                }
                Ok(Latency::Uniform { low, high })
            }
            "lognormal" => {
                let mut median = None;
                let mut sigma = None;
                let mut max = None;
                for kv in spec.split(',') {
                    let (k, v) = kv.split_once('=').ok_or_else(|| {
                        format!("{s:?}: write lognormal:median=50ms,sigma=0.5[,max=2s]")
                    })?;
                    match k.trim() {
                        "median" => median = Some(parse_duration(v)?),
                        "sigma" => {
                            let x: f64 = v
                                .trim()
                                .parse()
                                .map_err(|_| format!("{s:?}: sigma {v:?} is not a number"))?;
                            if !(x.is_finite() && x >= 0.0) {
                                return Err(format!("{s:?}: sigma must be zero or more"));
                            }
                            sigma = Some(x);
                        }
                        "max" => max = Some(parse_duration(v)?),
                        other => {
                            return Err(format!(
                                "{s:?}: unknown lognormal parameter {other:?} (median, sigma, max)"
                            ));
                        }
                    }
                }
                let median = median.ok_or_else(|| format!("{s:?}: median= is required"))?;
                let sigma = sigma.ok_or_else(|| format!("{s:?}: sigma= is required"))?;
                if median.is_zero() {
                    return Err(format!("{s:?}: the median must be above zero"));
                }
                let dist = rand_distr::LogNormal::new(median.as_secs_f64().ln(), sigma)
                    .map_err(|e| format!("{s:?}: {e}"))?;
                Ok(Latency::LogNormal {
                    median,
                    sigma,
                    max,
                    dist,
                })
            }
            other => Err(format!(
                "{s:?}: unknown distribution {other:?} (fixed, uniform, lognormal)"
            )),
        }
    }
}

impl FromStr for Latency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !s.contains('+') && !s.contains('@') {
            return Latency::parse_one(s);
        }
        let mut parts = Vec::new();
        for part in s.split('+') {
            let (dist, weight) = match part.rsplit_once('@') {
                Some((d, w)) => {
                    let w: f64 = w
                        .trim()
                        .parse()
                        .map_err(|_| format!("{part:?}: the weight {w:?} is not a number"))?;
                    (d, w)
                }
                None => (part, 1.0),
            };
            if !(weight.is_finite() && weight > 0.0) {
                return Err(format!("{part:?}: weights must be above zero"));
            }
            parts.push((weight, Latency::parse_one(dist.trim())?));
        }
        Ok(Latency::Mix(parts))
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Latency::Fixed(d) => write!(f, "fixed:{}", show(*d)),
            Latency::Uniform { low, high } => write!(f, "uniform:{}..{}", show(*low), show(*high)),
            Latency::LogNormal {
                median, sigma, max, ..
            } => {
                write!(f, "lognormal:median={},sigma={sigma}", show(*median))?;
                if let Some(m) = max {
                    write!(f, ",max={}", show(*m))?;
                }
                Ok(())
            }
            Latency::Mix(parts) => {
                for (i, (w, p)) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str("+")?;
                    }
                    write!(f, "{p}@{w}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration("200µs"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("50").unwrap_err().contains("no unit"));
        assert!(parse_duration("50h").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("1.2.3ms").is_err());
        assert_eq!(parse_seconds_or_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(
            parse_seconds_or_duration("30s"),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            parse_seconds_or_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
    }

    #[test]
    fn fixed_and_bare() {
        let mut rng = StdRng::seed_from_u64(1);
        for s in ["fixed:50ms", "50ms"] {
            let l: Latency = s.parse().unwrap();
            assert_eq!(l.sample(&mut rng), Duration::from_millis(50));
            assert_eq!(l.to_string(), "fixed:50ms");
        }
        let zero: Latency = "fixed:0ms".parse().unwrap();
        assert_eq!(zero.sample(&mut rng), Duration::ZERO);
    }

    #[test]
    fn uniform_stays_in_range() {
        let l: Latency = "uniform:20ms..80ms".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(2);
        let samples: Vec<Duration> = (0..2000).map(|_| l.sample(&mut rng)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= Duration::from_millis(20) && *d <= Duration::from_millis(80))
        );
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        assert!((mean.as_secs_f64() - 0.050).abs() < 0.003, "mean {mean:?}");
        assert!(
            "uniform:80ms..20ms"
                .parse::<Latency>()
                .unwrap_err()
                .contains("below")
        );
        assert!(
            "uniform:20ms"
                .parse::<Latency>()
                .unwrap_err()
                .contains("LOW..HIGH")
        );
    }

    #[test]
    fn lognormal_has_its_median_and_cap() {
        let l: Latency = "lognormal:median=50ms,sigma=0.5".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let mut samples: Vec<Duration> = (0..20_000).map(|_| l.sample(&mut rng)).collect();
        samples.sort();
        let median = samples[samples.len() / 2].as_secs_f64();
        assert!((median - 0.050).abs() < 0.002, "median {median}");
        assert_eq!(l.to_string(), "lognormal:median=50ms,sigma=0.5");

        let capped: Latency = "lognormal:median=50ms,sigma=2,max=100ms".parse().unwrap();
        assert!((0..5000).all(|_| capped.sample(&mut rng) <= Duration::from_millis(100)));

        assert!(
            "lognormal:median=50ms"
                .parse::<Latency>()
                .unwrap_err()
                .contains("sigma")
        );
        assert!(
            "lognormal:sigma=1"
                .parse::<Latency>()
                .unwrap_err()
                .contains("median")
        );
        assert!("lognormal:median=50ms,sigma=-1".parse::<Latency>().is_err());
        assert!(
            "lognormal:median=50ms,sigma=1,p=3"
                .parse::<Latency>()
                .unwrap_err()
                .contains("unknown")
        );
    }

    #[test]
    fn mixtures_follow_their_weights() {
        let l: Latency = "fixed:50ms@98+fixed:700ms@2".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(4);
        let slow = (0..50_000)
            .filter(|_| l.sample(&mut rng) == Duration::from_millis(700))
            .count();
        assert!((800..1200).contains(&slow), "slow draws: {slow}");
        assert_eq!(l.to_string(), "fixed:50ms@98+fixed:700ms@2");
        // Unweighted parts weigh the same.
        assert!(matches!("10ms+20ms".parse::<Latency>().unwrap(), Latency::Mix(p) if p.len() == 2));
        assert!("fixed:1ms@0+fixed:2ms".parse::<Latency>().is_err());
        assert!("fixed:1ms@x".parse::<Latency>().is_err());
    }

    #[test]
    fn unknown_kinds_are_named() {
        let e = "gamma:1ms".parse::<Latency>().unwrap_err();
        assert!(e.contains("unknown distribution"), "{e}");
    }
}

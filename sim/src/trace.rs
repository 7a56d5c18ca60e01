//! Arrival traces: what the simulator replays, and the CSV formats it reads.
//!
//! A trace is a series of equal bins, each with a count of arrivals and optionally the mean
//! service time of those arrivals. Within a bin, arrivals are spread evenly (a fluid model).
//!
//! CSV formats (`--format`):
//! - `counts`: `time,arrivals[,service_seconds]` per row, on a regular grid (the bin is the
//!   smallest step between rows; missing rows are bins with no arrivals);
//! - `requests`: one row per request, the time in the first column (other columns ignored),
//!   binned to 1 s;
//! - `auto` (default): `requests` when rows have one column, else `counts`.
//!
//! A time is Unix seconds (`1715558400`, `1715558400.25`) or a UTC date-time
//! (`2024-05-13 08:00:00`, `2024-05-13T08:00:00.123Z`). A first line that does not parse is a
//! header. CRLF line endings and a missing final newline are fine.

use std::fmt;

use chrono::{DateTime, NaiveDateTime};

/// One replayable series.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub name: String,
    /// Unix seconds of the first bin's start.
    pub start: f64,
    /// Seconds per bin.
    pub bin: f64,
    pub arrivals: Vec<f64>,
    /// Mean service seconds per bin, when the trace has them.
    pub service: Option<Vec<f64>>,
}

impl Trace {
    pub fn duration(&self) -> f64 {
        self.arrivals.len() as f64 * self.bin
    }

    pub fn end(&self) -> f64 {
        self.start + self.duration()
    }

    pub fn total(&self) -> f64 {
        self.arrivals.iter().sum()
    }

    fn index(&self, t: f64) -> Option<usize> {
        let i = ((t - self.start) / self.bin).floor();
        (i >= 0.0 && (i as usize) < self.arrivals.len()).then_some(i as usize)
    }

    /// Arrivals per second at `t`.
    pub fn rate_at(&self, t: f64) -> f64 {
        self.index(t).map_or(0.0, |i| self.arrivals[i] / self.bin)
    }

    /// Mean service seconds at `t`, when given.
    pub fn service_at(&self, t: f64) -> Option<f64> {
        let s = self.service.as_ref()?;
        self.index(t).map(|i| s[i]).filter(|v| *v > 0.0)
    }

    /// Multiplies every count (e.g. to turn requests into GPU jobs of a chosen volume).
    pub fn scaled(mut self, factor: f64) -> Self {
        for a in &mut self.arrivals {
            *a *= factor;
        }
        self
    }

    /// Samples for the forecaster: `(from, to, arrivals)` per bin.
    pub fn samples(&self) -> impl Iterator<Item = (f64, f64, f64)> + '_ {
        self.arrivals.iter().enumerate().map(|(i, a)| {
            let from = self.start + i as f64 * self.bin;
            (from, from + self.bin, *a)
        })
    }

    /// Writes the `counts` format (what the shipped traces are).
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        match &self.service {
            Some(_) => out.push_str("unix_seconds,arrivals,service_seconds\n"),
            None => out.push_str("unix_seconds,arrivals\n"),
        }
        for (i, a) in self.arrivals.iter().enumerate() {
            let t = self.start + i as f64 * self.bin;
            match &self.service {
                Some(s) => out.push_str(&format!("{t:.0},{a},{:.2}\n", s[i])),
                None => out.push_str(&format!("{t:.0},{a}\n")),
            }
        }
        out
    }
}

/// How to read a CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Auto,
    Counts,
    Requests,
}

/// A CSV problem, with its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TraceError {
    pub file: String,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: usize,
    /// 1-based column, when one is at fault.
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}: {}", self.file, self.message),
            (l, None) => write!(f, "{}:{l}: {}", self.file, self.message),
            (l, Some(c)) => write!(f, "{}:{l}: column {c}: {}", self.file, self.message),
        }
    }
}

/// Parses a time: Unix seconds or a UTC date-time.
pub fn parse_time(s: &str) -> Option<f64> {
    let s = s.trim().trim_matches('"');
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) * 1e-9);
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            let u = t.and_utc();
            return Some(u.timestamp() as f64 + f64::from(u.timestamp_subsec_nanos()) * 1e-9);
        }
    }
    None
}

/// Parses a trace CSV (see the module docs).
pub fn parse_csv(text: &str, file: &str, format: Format) -> Result<Trace, TraceError> {
    let err = |line: usize, column: Option<usize>, message: String| TraceError {
        file: file.to_string(),
        line,
        column,
        message,
    };
    let mut rows: Vec<(usize, Vec<&str>)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        rows.push((i + 1, line.split(',').map(str::trim).collect()));
    }
    // A first row whose time does not parse is a header.
    if let Some((_, first)) = rows.first()
        && parse_time(first[0]).is_none()
    {
        rows.remove(0);
    }
    if rows.is_empty() {
        return Err(err(0, None, "no data rows".into()));
    }
    let format = match format {
        Format::Auto if rows[0].1.len() == 1 => Format::Requests,
        Format::Auto => Format::Counts,
        f => f,
    };
    let mut last_t = f64::NEG_INFINITY;
    match format {
        Format::Requests => {
            let mut times = Vec::with_capacity(rows.len());
            for (line, cols) in &rows {
                let t = parse_time(cols[0]).ok_or_else(|| {
                    err(
                        *line,
                        Some(1),
                        format!(
                            "{:?} is not a time (Unix seconds or YYYY-MM-DD HH:MM:SS)",
                            cols[0]
                        ),
                    )
                })?;
                if t < last_t {
                    return Err(err(
                        *line,
                        Some(1),
                        "times go backwards; sort the file by time".into(),
                    ));
                }
                last_t = t;
                times.push(t);
            }
            let start = times[0].floor();
            let n = (last_t.floor() - start) as usize + 1;
            if n > 400 * 86_400 {
                return Err(err(
                    0,
                    None,
                    "spans more than 400 days of per-request rows".into(),
                ));
            }
            let mut arrivals = vec![0.0; n];
            for t in times {
                arrivals[(t.floor() - start) as usize] += 1.0;
            }
            Ok(Trace {
                name: file.into(),
                start,
                bin: 1.0,
                arrivals,
                service: None,
            })
        }
        Format::Counts | Format::Auto => {
            let mut parsed: Vec<(f64, f64, Option<f64>)> = Vec::with_capacity(rows.len());
            for (line, cols) in &rows {
                if cols.len() < 2 || cols.len() > 3 {
                    return Err(err(
                        *line,
                        None,
                        format!(
                            "{} columns; expected time,arrivals[,service_seconds] (use --format requests for one row per request)",
                            cols.len()
                        ),
                    ));
                }
                let t = parse_time(cols[0]).ok_or_else(|| {
                    err(
                        *line,
                        Some(1),
                        format!(
                            "{:?} is not a time (Unix seconds or YYYY-MM-DD HH:MM:SS)",
                            cols[0]
                        ),
                    )
                })?;
                if t <= last_t {
                    return Err(err(
                        *line,
                        Some(1),
                        "times must increase from row to row".into(),
                    ));
                }
                last_t = t;
                let a: f64 = cols[1]
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| {
                        err(
                            *line,
                            Some(2),
                            format!("arrivals {:?} is not a number ≥ 0", cols[1]),
                        )
                    })?;
                let s = match cols.get(2) {
                    None => None,
                    Some(&"") => None,
                    Some(v) => Some(
                        v.parse()
                            .ok()
                            .filter(|x: &f64| x.is_finite() && *x > 0.0)
                            .ok_or_else(|| {
                                err(
                                    *line,
                                    Some(3),
                                    format!("service seconds {v:?} is not a number > 0"),
                                )
                            })?,
                    ),
                };
                parsed.push((t, a, s));
            }
            let bin = parsed
                .windows(2)
                .map(|w| w[1].0 - w[0].0)
                .fold(f64::INFINITY, f64::min);
            let bin = if bin.is_finite() { bin } else { 1.0 };
            let start = parsed[0].0;
            let n = ((last_t - start) / bin).round() as usize + 1;
            if n > 50_000_000 {
                return Err(err(0, None, "too many bins (more than 50 million)".into()));
            }
            let mut arrivals = vec![0.0; n];
            let any_service = parsed.iter().any(|p| p.2.is_some());
            let mut service = any_service.then(|| vec![0.0; n]);
            for (line_i, (t, a, s)) in parsed.iter().enumerate() {
                let i = ((t - start) / bin).round() as usize;
                let off = (t - start) / bin - i as f64;
                if off.abs() > 1e-6 {
                    return Err(err(
                        rows[line_i].0,
                        Some(1),
                        format!("time {t} is not on the {bin} s grid that starts at {start}"),
                    ));
                }
                arrivals[i] += a;
                if let (Some(sv), Some(s)) = (&mut service, s) {
                    sv[i] = *s;
                }
            }
            Ok(Trace {
                name: file.into(),
                start,
                bin,
                arrivals,
                service,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_header_crlf_and_datetimes_parse() {
        let t = parse_csv(
            "Time,TIMESTAMP\r\n2024-05-10 00:00:00,146\r\n2024-05-10 00:00:10,238\r\n2024-05-10 00:00:30,5",
            "x.csv",
            Format::Auto,
        )
        .unwrap();
        assert_eq!((t.bin, t.start), (10.0, 1_715_299_200.0));
        assert_eq!(t.arrivals, [146.0, 238.0, 0.0, 5.0]);
        assert!((t.rate_at(1_715_299_205.0) - 14.6).abs() < 1e-9);
    }

    #[test]
    fn requests_are_binned_per_second() {
        let t = parse_csv(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,4808,10\n2023-11-16 18:17:04.03,3180,8\n2023-11-16 18:17:04.5,1,1\n",
            "r.csv",
            Format::Requests,
        )
        .unwrap();
        assert_eq!(t.arrivals, [1.0, 2.0]);
        let t = parse_csv("1.5\n1.7\n3.2\n", "r.csv", Format::Auto).unwrap();
        assert_eq!(t.arrivals, [2.0, 0.0, 1.0]);
    }

    #[test]
    fn bad_rows_name_the_line_and_column() {
        let e = parse_csv("t,a\n0,1\n10,x\n", "my.csv", Format::Auto).unwrap_err();
        assert_eq!((e.line, e.column), (3, Some(2)));
        assert_eq!(
            e.to_string(),
            "my.csv:3: column 2: arrivals \"x\" is not a number ≥ 0"
        );
        let e = parse_csv("0,1\n10,2\n5,1\n", "my.csv", Format::Auto).unwrap_err();
        assert_eq!((e.line, e.column), (3, Some(1)));
        let e = parse_csv("0,1,0\n", "my.csv", Format::Auto).unwrap_err();
        assert_eq!((e.line, e.column), (1, Some(3)));
        let e = parse_csv("0,1\nnoon,2\n", "my.csv", Format::Auto).unwrap_err();
        assert_eq!((e.line, e.column), (2, Some(1)));
        let e = parse_csv("0,1,2,3\n", "my.csv", Format::Auto).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(
            parse_csv("t,a\n", "my.csv", Format::Auto)
                .unwrap_err()
                .to_string()
                .contains("no data")
        );
        let e = parse_csv("0,1\n10,1\n15,1\n22,1\n", "my.csv", Format::Auto).unwrap_err();
        assert_eq!((e.line, e.column), (4, Some(1)), "{e}");
    }
}

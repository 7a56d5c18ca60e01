//! Declared demand windows: the `schedule` and `timezone` keys.
//!
//! `schedule` holds one or more windows separated by `;`, each `<cron start> for <duration> =
//! <replicas>`:
//!
//! ```text
//! 0 8 * * 1-5 for 10h = 20; 30 11 * * 1-5 for 90m = 40
//! ```
//!
//! - **cron start**: five fields, minute hour day-of-month month day-of-week, with `*`, `?`,
//!   lists `a,b`, ranges `a-b`, steps `*/n` and `a-b/n` and `a/n`, month names `jan`–`dec` and day
//!   names `sun`–`sat` (day 7 is Sunday too), and the macros `@yearly`, `@annually`, `@monthly`,
//!   `@weekly`, `@daily`, `@midnight`, `@hourly`. When both day fields are restricted a day matches
//!   either (classic cron, and KEDA's robfig/cron); when one is `*` or `?` both must match.
//! - **duration**: elapsed time, `<n>d`, `<n>h`, `<n>m`, `<n>s` or a sum like `1h30m`; more than
//!   zero and at most 31 days.
//! - **replicas**: a positive integer.
//!
//! **Time zone.** Cron fields are matched in local wall-clock time of `timezone` (an IANA name,
//! default `UTC`). A start that falls in a *skipped* local hour (spring forward: 02:30 when clocks
//! jump from 02:00 to 03:00) opens the window at the jump, i.e. at 03:00 new time — the job is not
//! lost, as with Vixie cron. A start in a *repeated* local hour (fall back: 01:30 happens twice)
//! opens the window once, at the first occurrence. The duration is elapsed time, so a 10 h window
//! that spans a change closes 10 real hours after it opened.
//!
//! **Lead time.** A window is applied `leadTimeSeconds` before its start, and closes at start +
//! duration: at instant `t` a window is open when one of its starts `s` satisfies
//! `s - lead <= t < s + duration`.
//!
//! **Several windows.** Windows may overlap or nest (a lunch peak inside business hours); where
//! several are open the largest replicas wins — what the HPA does with several KEDA `cron`
//! triggers. What is refused as *overlapping* is a window that overlaps **itself**: its duration
//! is longer than the shortest wall-clock time between two of its own consecutive starts (e.g.
//! `0 * * * * for 2h`), so it would never close where its author expects. The check runs over a
//! full 28-year calendar cycle, in local time.
//!
//! **KEDA `cron`.** KEDA's cron scaler is active between a start and the next end, with
//! `desiredReplicas` while active and an error when start equals end. The same trigger here is
//! `<start> for <end - start> = <desiredReplicas>` (a zero duration is the same error); the tests
//! check that both give the same answer every 10 minutes across the DST changes. One difference:
//! an overnight window that spans a DST change lasts its elapsed duration here, where KEDA's end
//! cron closes it at the local end time (an hour earlier or later that one night).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Longest accepted window.
pub const MAX_DURATION_SECS: i64 = 31 * 86_400;

/// Windows in one `schedule` (the scaler's bound, `headroom_scaler::bounds`): each start is
/// checked over a 28-year cycle at parse time, so the count bounds the parser's work.
pub const MAX_WINDOWS: usize = 32;

/// Why a `schedule` or `timezone` value is refused. Each variant names its key and, for a
/// window, its position (1-based) and text, so the trigger parser can answer `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    UnknownTimezone {
        value: String,
    },
    Empty,
    Window {
        /// 1-based position in the `;`-separated list.
        index: usize,
        window: String,
        reason: String,
    },
    TooManyWindows {
        count: usize,
    },
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::UnknownTimezone { value } => write!(
                f,
                "key `timezone`: {value:?} is not an IANA time zone name (e.g. `Europe/Berlin`)"
            ),
            ScheduleError::Empty => f.write_str(
                "key `schedule`: no window (expected `<cron> for <duration> = <replicas>`)",
            ),
            ScheduleError::Window {
                index,
                window,
                reason,
            } => write!(f, "key `schedule`, window {index} {window:?}: {reason}"),
            ScheduleError::TooManyWindows { count } => write!(
                f,
                "key `schedule`: {count} windows; at most {MAX_WINDOWS} (the scaler's bound)"
            ),
        }
    }
}

impl std::error::Error for ScheduleError {}

impl ScheduleError {
    /// The metadata key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            ScheduleError::UnknownTimezone { .. } => "timezone",
            ScheduleError::Empty
            | ScheduleError::Window { .. }
            | ScheduleError::TooManyWindows { .. } => "schedule",
        }
    }

    /// What was expected, for the scaler's `metadata::Problem::Invalid`.
    pub fn expected(&self) -> String {
        match self {
            ScheduleError::UnknownTimezone { .. } => "an IANA time zone name".into(),
            ScheduleError::Empty => "`<cron> for <duration> = <replicas>` windows".into(),
            ScheduleError::Window { index, reason, .. } => {
                format!("valid (window {index}: {reason})")
            }
            ScheduleError::TooManyWindows { count } => {
                format!("at most {MAX_WINDOWS} windows, not {count}")
            }
        }
    }
}

/// A parsed five-field cron expression.
#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    dom_star: bool,
    dow_star: bool,
    /// Matching minutes of the day, ascending (hours × minutes).
    times: Vec<u16>,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.text)
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// First name's value.
    names_from: u32,
}

const FIELDS: [FieldSpec; 5] = [
    FieldSpec {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        names_from: 0,
    },
    FieldSpec {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        names_from: 0,
    },
    FieldSpec {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        names_from: 0,
    },
    FieldSpec {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
        names_from: 1,
    },
    // 7 is Sunday as well; folded into 0 below.
    FieldSpec {
        name: "day of week",
        min: 0,
        max: 7,
        names: &DAYS,
        names_from: 0,
    },
];

/// Go's `strconv.ParseInt(s, 10, _)`: an optional sign then ASCII digits (how KEDA reads an
/// integer; the scaler's metadata reader uses this one too).
pub fn parse_int<T: std::str::FromStr>(s: &str) -> Option<T> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_value(s: &str, spec: &FieldSpec) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = spec.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + spec.names_from);
    }
    let v: u32 = parse_int(s)
        .filter(|_| !s.starts_with(['+', '-']))
        .ok_or_else(|| format!("{} field: {s:?} is not a number or name", spec.name))?;
    if v < spec.min || v > spec.max {
        return Err(format!(
            "{} field: {v} is outside {}-{}",
            spec.name, spec.min, spec.max
        ));
    }
    Ok(v)
}

/// Parses one field into a bit set; returns (bits, is_star).
fn parse_field(field: &str, spec: &FieldSpec) -> Result<(u64, bool), String> {
    if field == "*" || field == "?" {
        let mut bits = 0u64;
        for v in spec.min..=spec.max {
            bits |= 1 << v;
        }
        return Ok((bits, true));
    }
    let mut bits = 0u64;
    for item in field.split(',') {
        if item.is_empty() {
            return Err(format!("{} field: empty list item in {field:?}", spec.name));
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = parse_int(s)
                    .filter(|n: &u32| *n > 0 && !s.starts_with(['+', '-']))
                    .ok_or_else(|| {
                        format!("{} field: step {s:?} is not a positive integer", spec.name)
                    })?;
                (r, Some(step))
            }
            None => (item, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (spec.min, spec.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (parse_value(a, spec)?, parse_value(b, spec)?);
            if a > b {
                return Err(format!(
                    "{} field: range {range:?} runs backwards",
                    spec.name
                ));
            }
            (a, b)
        } else {
            let a = parse_value(range, spec)?;
            // `a/n` means from a to the end, every n.
            (a, if step.is_some() { spec.max } else { a })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, false))
}

impl Cron {
    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the cron may start on this local date.
    pub fn matches_date(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().num_days_from_sunday()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// Matching minutes of the day, ascending.
    pub fn times_of_day(&self) -> &[u16] {
        &self.times
    }
}

impl FromStr for Cron {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let expanded = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!("unknown cron macro {text:?}"));
            }
            _ => text,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "cron {text:?} has {} fields; expected 5 (minute hour day-of-month month day-of-week)",
                fields.len()
            ));
        }
        let mut parsed = [(0u64, false); 5];
        for (i, (field, spec)) in fields.iter().zip(FIELDS.iter()).enumerate() {
            parsed[i] = parse_field(field, spec)?;
        }
        let mut dow = parsed[4].0;
        if dow & (1 << 7) != 0 {
            dow = (dow & !(1 << 7)) | 1;
        }
        let minutes = parsed[0].0;
        let hours = parsed[1].0 as u32;
        let mut times = Vec::new();
        for h in 0..24u16 {
            if hours & (1 << h) == 0 {
                continue;
            }
            for m in 0..60u16 {
                if minutes & (1 << m) != 0 {
                    times.push(h * 60 + m);
                }
            }
        }
        Ok(Cron {
            text: text.to_string(),
            minutes,
            hours,
            days_of_month: parsed[2].0 as u32,
            months: parsed[3].0 as u16,
            days_of_week: dow as u8,
            dom_star: parsed[2].1,
            dow_star: parsed[4].1,
            times,
        })
    }
}

/// Maps a local wall-clock time to an instant: a skipped time (spring forward) maps to the
/// moment the clocks jump, a repeated time (fall back) to its first occurrence.
pub fn resolve_local(tz: &Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: the first valid local minute after it is the jump. Gaps are at most a
            // few hours in the tz database; 48 h bounds the search whatever the data says.
            let mut probe = local;
            for _ in 0..(48 * 60) {
                probe += Duration::minutes(1);
                let start = probe
                    .date()
                    .and_hms_opt(probe.hour_u32(), probe.minute_u32(), 0);
                if let Some(p) = start
                    && let LocalResult::Single(t) | LocalResult::Ambiguous(t, _) =
                        tz.from_local_datetime(&p)
                {
                    return t.with_timezone(&Utc);
                }
            }
            // Unreachable with real tz data; treat the time as UTC rather than fail.
            Utc.from_utc_datetime(&local)
        }
    }
}

trait HourMinute {
    fn hour_u32(&self) -> u32;
    fn minute_u32(&self) -> u32;
}

impl HourMinute for NaiveDateTime {
    fn hour_u32(&self) -> u32 {
        chrono::Timelike::hour(self)
    }
    fn minute_u32(&self) -> u32 {
        chrono::Timelike::minute(self)
    }
}

fn local_at(date: NaiveDate, minute_of_day: u16) -> Option<NaiveDateTime> {
    date.and_hms_opt(
        u32::from(minute_of_day / 60),
        u32::from(minute_of_day % 60),
        0,
    )
}

/// One declared window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start: Cron,
    /// Elapsed seconds the window stays open after its start.
    pub duration_secs: i64,
    pub replicas: u32,
}

/// The parsed `schedule` + `timezone`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub windows: Vec<Window>,
    pub timezone: Tz,
}

/// Parses a duration: `<n><unit>` terms (`d`, `h`, `m`, `s`) summed, e.g. `1h30m`.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!("duration {s:?} is negative"));
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    let mut terms = 0;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(format!(
                    "duration {s:?}: unexpected {c:?} (use e.g. 10h, 90m, 1h30m, 45s, 2d)"
                ));
            }
        };
        if digits.is_empty() {
            return Err(format!("duration {s:?}: unit {c:?} without a number"));
        }
        let n: i64 = digits
            .parse()
            .map_err(|_| format!("duration {s:?} is too long"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {s:?} is too long"))?;
        digits.clear();
        terms += 1;
    }
    if !digits.is_empty() || terms == 0 {
        return Err(format!(
            "duration {s:?} needs a unit (d, h, m or s), e.g. 10h or 90m"
        ));
    }
    if total <= 0 {
        return Err(format!("duration {s:?} is zero"));
    }
    if total > MAX_DURATION_SECS {
        return Err(format!("duration {s:?} is longer than 31 days"));
    }
    Ok(total)
}

fn parse_window(text: &str) -> Result<Window, String> {
    let (left, replicas) = text
        .rsplit_once('=')
        .ok_or("expected `<cron> for <duration> = <replicas>`: no `=`")?;
    let replicas = replicas.trim();
    let replicas: u32 = parse_int::<i64>(replicas)
        .ok_or_else(|| format!("replicas {replicas:?} is not an integer"))
        .and_then(|n| {
            if n < 1 {
                Err(format!("replicas {n} is not a positive integer"))
            } else {
                u32::try_from(n).map_err(|_| format!("replicas {n} is too large"))
            }
        })?;
    let words: Vec<&str> = left.split_whitespace().collect();
    let Some(pos) = words.iter().rposition(|w| w.eq_ignore_ascii_case("for")) else {
        return Err("expected `<cron> for <duration> = <replicas>`: no `for`".into());
    };
    let cron_text = words[..pos].join(" ");
    let duration_text = words[pos + 1..].join("");
    if duration_text.is_empty() {
        return Err("no duration after `for`".into());
    }
    let start: Cron = cron_text.parse()?;
    let duration_secs = parse_duration(&duration_text)?;
    Ok(Window {
        start,
        duration_secs,
        replicas,
    })
}

/// First day of the calendar cycle scanned for self-overlap; 28 years repeat every weekday and
/// leap-day combination between 1901 and 2099.
fn cycle() -> impl Iterator<Item = NaiveDate> {
    let first = NaiveDate::from_ymd_opt(2001, 1, 1);
    let last = NaiveDate::from_ymd_opt(2028, 12, 31);
    let mut next = first;
    std::iter::from_fn(move || {
        let d = next?;
        if Some(d) > last {
            return None;
        }
        next = d.succ_opt();
        Some(d)
    })
}

/// The shortest wall-clock gap, in minutes, between consecutive starts of `cron`; `None` when
/// it never starts, `Some(i64::MAX)` when it starts once per cycle.
fn shortest_gap_minutes(cron: &Cron) -> Option<i64> {
    let times = cron.times_of_day();
    let (first, last) = (*times.first()? as i64, *times.last()? as i64);
    let mut best = times
        .windows(2)
        .map(|w| i64::from(w[1] - w[0]))
        .min()
        .unwrap_or(i64::MAX);
    let mut prev: Option<NaiveDate> = None;
    let mut any = false;
    for d in cycle().filter(|d| cron.matches_date(*d)) {
        any = true;
        if let Some(p) = prev {
            let days = (d - p).num_days();
            best = best.min(days * 1440 + first - last);
        }
        prev = Some(d);
    }
    any.then_some(best)
}

impl Schedule {
    /// Parses `schedule` with `timezone` (`None` = UTC).
    pub fn parse(schedule: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        let timezone = match timezone.map(str::trim) {
            None | Some("") => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScheduleError::UnknownTimezone { value: name.into() })?,
        };
        let count = schedule.split(';').filter(|w| !w.trim().is_empty()).count();
        if count > MAX_WINDOWS {
            return Err(ScheduleError::TooManyWindows { count });
        }
        let mut windows = Vec::new();
        for (i, text) in schedule.split(';').enumerate() {
            let text = text.trim();
            if text.is_empty() {
                // A trailing `;` is harmless; an empty window in the middle is a typo.
                if i + 1 == schedule.split(';').count() && i > 0 {
                    continue;
                }
                return Err(ScheduleError::Window {
                    index: i + 1,
                    window: text.into(),
                    reason: "empty window".into(),
                });
            }
            let err = |reason: String| ScheduleError::Window {
                index: i + 1,
                window: text.into(),
                reason,
            };
            let w = parse_window(text).map_err(err)?;
            match shortest_gap_minutes(&w.start) {
                None => return Err(err("the cron start never matches a date".into())),
                Some(gap) if w.duration_secs > gap.saturating_mul(60) => {
                    return Err(err(format!(
                        "overlapping: the window lasts {}s but two of its starts are only {}s apart",
                        w.duration_secs,
                        gap * 60
                    )));
                }
                Some(_) => {}
            }
            windows.push(w);
        }
        if windows.is_empty() {
            return Err(ScheduleError::Empty);
        }
        Ok(Self { windows, timezone })
    }

    /// The latest start of `w` in `(after, at_or_before]`, if any.
    fn latest_start(
        &self,
        w: &Window,
        after: DateTime<Utc>,
        at_or_before: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let tz = &self.timezone;
        // One day of margin each side covers any UTC offset and DST mapping.
        let mut day = at_or_before.with_timezone(tz).date_naive().succ_opt()?;
        let stop = after.with_timezone(tz).date_naive().pred_opt()?;
        while day >= stop {
            if w.start.matches_date(day) {
                for &m in w.start.times_of_day().iter().rev() {
                    let Some(local) = local_at(day, m) else {
                        continue;
                    };
                    let t = resolve_local(tz, local);
                    if t <= at_or_before {
                        if t > after {
                            return Some(t);
                        }
                        // Earlier times of this day, and earlier days, are even earlier.
                        return None;
                    }
                }
            }
            day = day.pred_opt()?;
        }
        None
    }

    /// Whether window `w` is open at `t` when applied `lead_secs` early.
    pub fn is_open(&self, w: &Window, t: DateTime<Utc>, lead_secs: i64) -> bool {
        let lead = Duration::seconds(lead_secs.max(0));
        let after = t - Duration::seconds(w.duration_secs);
        self.latest_start(w, after, t + lead).is_some()
    }

    /// The replicas the schedule asks for at `t` (the largest of the open windows), `None` when
    /// no window is open.
    pub fn replicas_at(&self, t: DateTime<Utc>, lead_secs: i64) -> Option<u32> {
        self.windows
            .iter()
            .filter(|w| self.is_open(w, t, lead_secs))
            .map(|w| w.replicas)
            .max()
    }

    /// Every start of every window in `[from, to)`, ascending, as (instant, window index).
    /// Bounded by the caller's range; used by the simulator and the tests.
    pub fn starts_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<(DateTime<Utc>, usize)> {
        let tz = &self.timezone;
        let mut out = Vec::new();
        let (Some(first), Some(last)) = (
            from.with_timezone(tz).date_naive().pred_opt(),
            to.with_timezone(tz).date_naive().succ_opt(),
        ) else {
            return out;
        };
        for (i, w) in self.windows.iter().enumerate() {
            let mut day = first;
            while day <= last {
                if w.start.matches_date(day) {
                    let mut prev: Option<DateTime<Utc>> = None;
                    for &m in w.start.times_of_day() {
                        let Some(local) = local_at(day, m) else {
                            continue;
                        };
                        let t = resolve_local(tz, local);
                        // Several skipped times map to one jump: one start.
                        if prev == Some(t) {
                            continue;
                        }
                        prev = Some(t);
                        if t >= from && t < to {
                            out.push((t, i));
                        }
                    }
                }
                let Some(next) = day.succ_opt() else { break };
                day = next;
            }
        }
        out.sort();
        out
    }
}

/// Unix seconds (fractional) to a UTC instant, clamped into chrono's range.
pub fn instant(unix_secs: f64) -> DateTime<Utc> {
    let secs = if unix_secs.is_finite() {
        unix_secs.floor().clamp(-8.0e12, 8.0e12) as i64
    } else {
        0
    };
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_documented_example_parses_with_nested_windows_taking_the_max() {
        let s =
            Schedule::parse("0 8 * * 1-5 for 10h = 20; 30 11 * * 1-5 for 90m = 40", None).unwrap();
        assert_eq!(s.windows.len(), 2);
        // Monday 2024-05-13 (UTC).
        assert_eq!(s.replicas_at(utc("2024-05-13T07:59:59Z"), 0), None);
        assert_eq!(s.replicas_at(utc("2024-05-13T08:00:00Z"), 0), Some(20));
        assert_eq!(s.replicas_at(utc("2024-05-13T11:30:00Z"), 0), Some(40));
        assert_eq!(s.replicas_at(utc("2024-05-13T12:59:59Z"), 0), Some(40));
        assert_eq!(s.replicas_at(utc("2024-05-13T13:00:00Z"), 0), Some(20));
        assert_eq!(s.replicas_at(utc("2024-05-13T17:59:59Z"), 0), Some(20));
        assert_eq!(s.replicas_at(utc("2024-05-13T18:00:00Z"), 0), None);
        // Saturday.
        assert_eq!(s.replicas_at(utc("2024-05-18T09:00:00Z"), 0), None);
    }

    #[test]
    fn a_window_is_applied_lead_time_before_its_start() {
        let s = Schedule::parse("0 8 * * * for 1h = 3", Some("Europe/Berlin")).unwrap();
        // 08:00 Berlin in May is 06:00 UTC.
        assert_eq!(s.replicas_at(utc("2024-05-13T05:54:59Z"), 300), None);
        assert_eq!(s.replicas_at(utc("2024-05-13T05:55:00Z"), 300), Some(3));
        assert_eq!(s.replicas_at(utc("2024-05-13T06:59:59Z"), 300), Some(3));
        // The end is not moved by the lead.
        assert_eq!(s.replicas_at(utc("2024-05-13T07:00:00Z"), 300), None);
    }

    #[test]
    fn windows_cross_midnight_and_the_weekend() {
        let s = Schedule::parse("0 22 * * fri for 2d12h = 5", None).unwrap();
        assert_eq!(s.replicas_at(utc("2024-05-17T21:59:00Z"), 0), None);
        assert_eq!(s.replicas_at(utc("2024-05-18T03:00:00Z"), 0), Some(5));
        assert_eq!(s.replicas_at(utc("2024-05-20T09:59:00Z"), 0), Some(5));
        assert_eq!(s.replicas_at(utc("2024-05-20T10:00:00Z"), 0), None);
    }

    #[test]
    fn a_start_in_the_skipped_hour_opens_at_the_jump() {
        // Europe/Berlin springs forward on 2024-03-31 at 02:00 CET (01:00 UTC) to 03:00 CEST.
        let s = Schedule::parse("30 2 * * * for 1h = 2", Some("Europe/Berlin")).unwrap();
        let starts = s.starts_between(utc("2024-03-30T00:00:00Z"), utc("2024-04-02T00:00:00Z"));
        let got: Vec<_> = starts.iter().map(|(t, _)| t.to_rfc3339()).collect();
        assert_eq!(
            got,
            [
                "2024-03-30T01:30:00+00:00", // 02:30 CET
                "2024-03-31T01:00:00+00:00", // 02:30 does not exist: opens at the jump (03:00 CEST)
                "2024-04-01T00:30:00+00:00", // 02:30 CEST
            ]
        );
        assert_eq!(s.replicas_at(utc("2024-03-31T00:59:59Z"), 0), None);
        assert_eq!(s.replicas_at(utc("2024-03-31T01:00:00Z"), 0), Some(2));
        assert_eq!(s.replicas_at(utc("2024-03-31T01:59:59Z"), 0), Some(2));
        assert_eq!(s.replicas_at(utc("2024-03-31T02:00:00Z"), 0), None);
    }

    #[test]
    fn a_start_in_the_repeated_hour_opens_once_at_the_first_occurrence() {
        // Europe/Berlin falls back on 2024-10-27: 02:00-03:00 happens twice (CEST then CET).
        let s = Schedule::parse("30 2 * * * for 30m = 2", Some("Europe/Berlin")).unwrap();
        let starts = s.starts_between(utc("2024-10-27T00:00:00Z"), utc("2024-10-28T00:00:00Z"));
        let got: Vec<_> = starts.iter().map(|(t, _)| t.to_rfc3339()).collect();
        assert_eq!(got, ["2024-10-27T00:30:00+00:00"]); // 02:30 CEST
        assert_eq!(s.replicas_at(utc("2024-10-27T00:45:00Z"), 0), Some(2));
        // The second 02:30 (CET, 01:30 UTC) does not open it again.
        assert_eq!(s.replicas_at(utc("2024-10-27T01:45:00Z"), 0), None);
    }

    #[test]
    fn duration_is_elapsed_time_across_a_dst_change() {
        // 20:00 the evening before the spring change, for 12 h: closes 12 real hours later, at
        // 09:00 CEST (07:00 UTC), not 08:00 local.
        let s = Schedule::parse("0 20 30 3 * for 12h = 1", Some("Europe/Berlin")).unwrap();
        assert_eq!(s.replicas_at(utc("2024-03-31T06:59:59Z"), 0), Some(1));
        assert_eq!(s.replicas_at(utc("2024-03-31T07:00:00Z"), 0), None);
    }

    /// KEDA's cron scaler: active when the next end comes before the next start.
    fn keda_active(start: &Schedule, end: &Schedule, t: DateTime<Utc>) -> bool {
        let horizon = t + Duration::days(8);
        let next = |s: &Schedule| {
            s.starts_between(t + Duration::seconds(1), horizon)
                .first()
                .map(|(x, _)| *x)
        };
        match (next(start), next(end)) {
            (Some(s), Some(e)) => e < s,
            _ => false,
        }
    }

    #[test]
    fn keda_cron_triggers_translate_minute_by_minute_across_dst() {
        for tz in ["Europe/Berlin", "America/New_York", "UTC", "Asia/Kolkata"] {
            let mut cases = vec![
                ("0 8 * * 1-5", "0 18 * * 1-5", "0 8 * * 1-5 for 10h = 7"),
                ("0 * * * *", "30 * * * *", "0 * * * * for 30m = 7"),
            ];
            // An overnight window that spans a DST change lasts its elapsed duration here, while
            // KEDA's end cron closes it at the local end time (an hour earlier or later that
            // night): equal only where the zone has no DST.
            if tz == "UTC" || tz == "Asia/Kolkata" {
                cases.push(("30 22 * * *", "0 6 * * *", "30 22 * * * for 7h30m = 7"));
            }
            for (start, end, ours) in cases {
                let s = Schedule::parse(&format!("{start} for 1m = 1"), Some(tz)).unwrap();
                let e = Schedule::parse(&format!("{end} for 1m = 1"), Some(tz)).unwrap();
                let o = Schedule::parse(ours, Some(tz)).unwrap();
                // Three weeks around the US and EU spring changes, every 10 minutes plus the
                // minutes around each boundary.
                let mut t = utc("2024-03-04T00:00:00Z");
                let end_t = utc("2024-04-08T00:00:00Z");
                while t < end_t {
                    // KEDA evaluates "next" strictly after now; a start at exactly `t` makes it
                    // active from `t` onwards, so compare at t + 1 s.
                    let probe = t + Duration::seconds(1);
                    let keda = keda_active(&s, &e, probe);
                    let mine = o.replicas_at(probe, 0).is_some();
                    assert_eq!(keda, mine, "{tz} {ours} at {probe}");
                    t += Duration::minutes(10);
                }
            }
        }
    }

    #[test]
    fn bad_input_names_the_key_and_the_window() {
        let cases: &[(&str, Option<&str>, &str, &str)] = &[
            (
                "0 8 * * 1-5 for 10h = 20",
                Some("Mars/Olympus"),
                "timezone",
                "IANA",
            ),
            ("0 8 * * for 10h = 20", None, "schedule", "4 fields"),
            ("0 25 * * * for 1h = 2", None, "schedule", "outside 0-23"),
            ("0 8 * * 1-5 for 0m = 2", None, "schedule", "zero"),
            ("0 8 * * 1-5 for -5m = 2", None, "schedule", "negative"),
            ("0 8 * * 1-5 for 10 = 2", None, "schedule", "needs a unit"),
            (
                "0 8 * * 1-5 for 10h = 2.5",
                None,
                "schedule",
                "not an integer",
            ),
            ("0 8 * * 1-5 for 10h = 0", None, "schedule", "positive"),
            ("0 8 * * 1-5 for 10h", None, "schedule", "no `=`"),
            ("0 8 * * 1-5 10h = 3", None, "schedule", "no `for`"),
            ("0 * * * * for 2h = 3", None, "schedule", "overlapping"),
            ("0 8 * * * for 25h = 3", None, "schedule", "overlapping"),
            ("0 0 30 2 * for 1h = 3", None, "schedule", "never matches"),
            ("0 8 * * 5-1 for 1h = 3", None, "schedule", "backwards"),
            ("0 8 * * 1-5 for 40d = 3", None, "schedule", "31 days"),
            ("@often for 1h = 2", None, "schedule", "macro"),
            ("", None, "schedule", "empty window"),
            (
                "0 8 * * * for 1h = 2;; 0 9 * * * for 1h = 2",
                None,
                "schedule",
                "window 2",
            ),
        ];
        for (schedule, tz, key, needle) in cases {
            let err = Schedule::parse(schedule, *tz).unwrap_err();
            assert_eq!(err.key(), *key, "{schedule}: {err}");
            assert!(err.to_string().contains(needle), "{schedule}: {err}");
        }
        let err = Schedule::parse("0 8 * * * for 1h = 2; 0 9 * * * for 3x = 2", None).unwrap_err();
        assert!(
            matches!(&err, ScheduleError::Window { index: 2, window, .. } if window == "0 9 * * * for 3x = 2"),
            "{err:?}"
        );
    }

    #[test]
    fn cron_fields_follow_classic_cron() {
        let c: Cron = "*/15 9-17/4 1,15 jan-mar mon-fri".parse().unwrap();
        assert_eq!(
            c.times_of_day(),
            &[
                540, 555, 570, 585, 780, 795, 810, 825, 1020, 1035, 1050, 1065
            ]
        );
        // Both day fields restricted: either matches.
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert!(c.matches_date(d(2024, 1, 15))); // a Monday, also the 15th
        assert!(c.matches_date(d(2024, 1, 16))); // Tuesday
        assert!(c.matches_date(d(2024, 2, 1))); // Thursday and the 1st
        assert!(!c.matches_date(d(2024, 1, 13))); // Saturday, not 1st/15th
        assert!(c.matches_date(d(2024, 1, 1)) && !c.matches_date(d(2024, 4, 1)));
        // One restricted: both must match.
        let c: Cron = "0 0 * * 7".parse().unwrap();
        assert!(c.matches_date(d(2024, 5, 12)) && !c.matches_date(d(2024, 5, 13)));
        let c: Cron = "0 0 13 * *".parse().unwrap();
        assert!(c.matches_date(d(2024, 5, 13)) && !c.matches_date(d(2024, 5, 12)));
        let c: Cron = "5/20 * * * *".parse().unwrap();
        assert_eq!(&c.times_of_day()[..3], &[5, 25, 45]);
        let c: Cron = "@daily".parse().unwrap();
        assert_eq!(c.times_of_day(), &[0]);
    }

    #[test]
    fn back_to_back_occurrences_are_not_overlapping() {
        assert!(Schedule::parse("0 * * * * for 1h = 1", None).is_ok());
        assert!(Schedule::parse("0 8 * * 1-5 for 3d = 1", None).is_err()); // Mon 8:00 + 3d > Tue 8:00
        assert!(Schedule::parse("0 8 * * 1 for 7d = 1", None).is_ok());
    }
}

//! Per-field differences of a dark release (SPEC §5), per route: how often each field of the shadow's
//! answers differs from the primary's, against how often it differs between two answers of the
//! baseline itself (the noise), and so which fields differ for real.
//!
//! Each compared pair brings all its differences ([`FieldDiff`]: a path such as `status`,
//! `header/x-v` or `/items/*/price`, and a [`Kind`]). A *noise pair* is the primary's answer against
//! a second answer of the baseline to the same request. A field is significant when its shadow
//! difference rate exceeds its noise rate by the rule of Twitter's Diffy ([`Rule`]).
//!
//! A pair counts against the canary (`max_mirror_diff_rate`) when one of its fields is significant,
//! judged when the pair is compared. Until the noise is learned ([`MIN_NOISE_PAIRS`] noise pairs)
//! pairs wait, at most [`MAX_PENDING`] of them, so that the first answers are not judged against a
//! noise not yet seen; a waiting pair is not yet counted as compared.
//!
//! Memory is bounded: at most [`MAX_FIELDS`] distinct fields a route (differences at further fields
//! are counted as overflow, by kind), one example pair a field, values cut to [`SHOWN`] characters.

use crate::config::CompareConfig;
use crate::release::mirror::Compare;
use crate::release::ReleaseTable;
use crate::stats;
use serde::Serialize;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Distinct fields (path and kind) kept per route.
pub const MAX_FIELDS: usize = 256;
/// Compared pairs that may wait for the noise to be learned.
pub const MAX_PENDING: usize = 1024;
/// Noise pairs after which a field's noise rate is trusted.
pub const MIN_NOISE_PAIRS: u64 = 20;
/// Characters of an example value shown.
pub const SHOWN: usize = 120;

/// How a field differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Both have it, with different values of one type.
    Value,
    /// Both have it, with values of different JSON types.
    Type,
    /// Only the shadow's answer has it.
    Added,
    /// Only the primary's answer has it.
    Removed,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Value, Kind::Type, Kind::Added, Kind::Removed];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Value => "value",
            Kind::Type => "type",
            Kind::Added => "added",
            Kind::Removed => "removed",
        }
    }
}

/// One difference of a compared pair.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDiff {
    /// `status`, `grpc-status`, `header/NAME`, `body` (a body that is not JSON), or a JSON pointer
    /// with array indexes as `*`.
    pub path: String,
    pub kind: Kind,
    /// The values as shown (JSON text, cut), `None` where absent.
    pub primary: Option<String>,
    pub shadow: Option<String>,
    /// JSON type names (`string`, `number`, …) of a body field's values.
    pub primary_type: Option<&'static str>,
    pub shadow_type: Option<&'static str>,
}

/// Diffy's rule, held to its evidence: a field is significant when its shadow difference rate `r` is
/// above its noise rate `n`, with `(r − n) / (r + n)` above `relative` and `r − n` above `absolute`,
/// for the rates as low (`r`) and as high (`n`) as their confidence sequences at [`FIELD_ALPHA`]
/// allow. A sequence covers its rate at all times with probability 1 − `FIELD_ALPHA`, so a field
/// that differs no more often between v1 and v2 than between two answers of v1 is ever judged
/// significant with probability at most 2 × `FIELD_ALPHA`, however often it is judged; the point
/// estimates alone, read after every pair, would take a noisy field's early low noise count for a
/// real difference (examples/mirror_noise_simulation.rs measures both).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Whether noise is learned at all (`noise_percent` above 0). Without, there is no noise to hold
    /// a difference against: every difference counts at once, as observed.
    pub learns: bool,
    pub relative: f64,
    pub absolute: f64,
}

/// The chance that each of a field's two confidence sequences (shadow rate, noise rate) ever misses
/// its rate.
pub const FIELD_ALPHA: f64 = 0.001;

impl Rule {
    /// The rule of a route's `compare:`.
    pub fn of(c: &Compare) -> Rule {
        Rule {
            learns: c.noise_per_million > 0,
            relative: c.noise_relative,
            absolute: c.noise_absolute,
        }
    }

    /// The rule of `route`'s `compare:` in `table`, if it compares mirrored answers.
    pub fn for_route(table: &ReleaseTable, route: &str) -> Option<Rule> {
        let r = table.route(table.route_id(route)?)?;
        Some(Rule::of(r.mirror.as_ref()?.compare.as_ref()?))
    }

    /// The rule of a `compare:` as written (validated: a value that does not read counts as 0).
    pub fn of_config(c: &CompareConfig) -> Rule {
        let read = |p: &crate::config::Percent| p.read().unwrap_or(0.0) / 100.0;
        Rule {
            learns: read(&c.noise_percent) > 0.0,
            relative: read(&c.noise_relative),
            absolute: read(&c.noise_absolute),
        }
    }

    pub fn significant(&self, shadow: u64, pairs: u64, noise: u64, noise_pairs: u64) -> bool {
        if pairs == 0 || shadow == 0 {
            return false;
        }
        let (r, n) = if self.learns {
            let (r, _) = stats::rate_interval(shadow, pairs, FIELD_ALPHA);
            let (_, n) = stats::rate_interval(noise, noise_pairs, FIELD_ALPHA);
            (r, n)
        } else {
            (shadow as f64 / pairs as f64, 0.0)
        };
        self.holds(r, n)
    }

    /// Diffy's thresholds on a shadow rate `r` and a noise rate `n`.
    pub fn holds(&self, r: f64, n: f64) -> bool {
        r > n && (r - n) / (r + n) > self.relative && r - n > self.absolute
    }
}

/// A compared pair, judged: what the rollout's gate sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judged {
    /// One of its differing fields is significant.
    pub significant: bool,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Example {
    pub primary: Option<String>,
    pub shadow: Option<String>,
}

#[derive(Debug, Clone)]
struct Field {
    path: String,
    kind: Kind,
    shadow_diffs: u64,
    noise_diffs: u64,
    example: Option<Example>,
    types: (Option<&'static str>, Option<&'static str>),
    /// Its last judgment: the pairs and noise pairs then, the rule, and whether it was significant.
    /// Reused until either count has grown by a 32nd (at least 8): a confidence sequence may be read
    /// at any moments, and computing two per field per pair would cost more than the comparison.
    judged: Cell<Option<(u64, u64, Rule, bool)>>,
}

/// A compared pair, as it is judged (at once, or once the noise is learned).
#[derive(Debug)]
struct Pending {
    /// Indexes of its differing fields.
    fields: Vec<usize>,
    /// Kinds of its differences at fields beyond [`MAX_FIELDS`] (judged by their overflow counts).
    overflow: Vec<Kind>,
}

#[derive(Debug)]
struct Ledger {
    target: String,
    pairs: u64,
    noise_pairs: u64,
    fields: Vec<Field>,
    index: HashMap<(String, Kind), usize>,
    /// Differences at fields beyond [`MAX_FIELDS`], by kind ([`Kind::ALL`] order): shadow, noise.
    overflow: [(u64, u64); 4],
    pending: VecDeque<Pending>,
}

impl Ledger {
    fn new(target: &str) -> Ledger {
        Ledger {
            target: target.to_string(),
            pairs: 0,
            noise_pairs: 0,
            fields: Vec::new(),
            index: HashMap::new(),
            overflow: [(0, 0); 4],
            pending: VecDeque::new(),
        }
    }

    /// The field of `d`, added if there is room.
    fn field(&mut self, d: &FieldDiff) -> Option<usize> {
        if let Some(&i) = self.index.get(&(d.path.clone(), d.kind)) {
            return Some(i);
        }
        if self.fields.len() >= MAX_FIELDS {
            return None;
        }
        self.fields.push(Field {
            path: d.path.clone(),
            kind: d.kind,
            shadow_diffs: 0,
            noise_diffs: 0,
            example: None,
            types: (d.primary_type, d.shadow_type),
            judged: Cell::new(None),
        });
        self.index
            .insert((d.path.clone(), d.kind), self.fields.len() - 1);
        Some(self.fields.len() - 1)
    }

    fn learned(&self, rule: &Rule) -> bool {
        !rule.learns || self.noise_pairs >= MIN_NOISE_PAIRS
    }

    fn significant(&self, i: usize, rule: &Rule) -> bool {
        let f = &self.fields[i];
        let fresh = |then: u64, now: u64| now - then.min(now) < (then / 32).max(8);
        if let Some((pairs, noise_pairs, r, significant)) = f.judged.get() {
            if r == *rule && fresh(pairs, self.pairs) && fresh(noise_pairs, self.noise_pairs) {
                return significant;
            }
        }
        let significant =
            rule.significant(f.shadow_diffs, self.pairs, f.noise_diffs, self.noise_pairs);
        f.judged
            .set(Some((self.pairs, self.noise_pairs, *rule, significant)));
        significant
    }

    fn overflow_significant(&self, kind: Kind, rule: &Rule) -> bool {
        let (shadow, noise) = self.overflow[kind as usize];
        rule.significant(shadow, self.pairs, noise, self.noise_pairs)
    }

    fn judge(&self, p: &Pending, rule: &Rule) -> Judged {
        let significant = p.fields.iter().any(|&i| self.significant(i, rule))
            || p.overflow
                .iter()
                .any(|&k| self.overflow_significant(k, rule));
        Judged { significant }
    }

    /// Judges the waiting pairs once the noise is learned, or the oldest when too many wait.
    fn release(&mut self, rule: &Rule, out: &mut Vec<Judged>) {
        let learned = self.learned(rule);
        while learned && !self.pending.is_empty() || self.pending.len() > MAX_PENDING {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            out.push(self.judge(&p, rule));
        }
    }
}

/// The per-field ledgers of every mirroring route.
#[derive(Debug, Default)]
pub struct Fields {
    routes: Mutex<HashMap<String, Ledger>>,
}

impl Fields {
    fn with<T>(&self, route: &str, target: &str, f: impl FnOnce(&mut Ledger) -> T) -> T {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ledger) = routes.get_mut(route) {
            if ledger.target != target {
                // The route mirrors to another target now: what was learned was about the old one.
                *ledger = Ledger::new(target);
            }
            return f(ledger);
        }
        // The route's name is copied once, not for every pair.
        f(routes
            .entry(route.to_string())
            .or_insert_with(|| Ledger::new(target)))
    }

    /// Counts a compared shadow pair with its differences; returns the pairs judged now (this one,
    /// and those that waited for the noise), for the comparison counters.
    pub fn shadow_pair(
        &self,
        route: &str,
        target: &str,
        diffs: &[FieldDiff],
        rule: &Rule,
    ) -> Vec<Judged> {
        self.with(route, target, |l| {
            l.pairs += 1;
            let mut pair = Pending {
                fields: Vec::with_capacity(diffs.len()),
                overflow: Vec::new(),
            };
            for d in diffs {
                match l.field(d) {
                    Some(i) => {
                        let f = &mut l.fields[i];
                        f.shadow_diffs += 1;
                        if f.example.is_none() {
                            f.example = Some(Example {
                                primary: d.primary.clone(),
                                shadow: d.shadow.clone(),
                            });
                        }
                        pair.fields.push(i);
                    }
                    None => {
                        l.overflow[d.kind as usize].0 += 1;
                        pair.overflow.push(d.kind);
                    }
                }
            }
            let mut out = Vec::new();
            if l.learned(rule) {
                out.push(l.judge(&pair, rule));
            } else {
                l.pending.push_back(pair);
                l.release(rule, &mut out);
            }
            out
        })
    }

    /// Counts a noise pair (the primary's answer against the baseline's second one); returns the
    /// waiting pairs this lets be judged.
    pub fn noise_pair(
        &self,
        route: &str,
        target: &str,
        diffs: &[FieldDiff],
        rule: &Rule,
    ) -> Vec<Judged> {
        self.with(route, target, |l| {
            l.noise_pairs += 1;
            for d in diffs {
                match l.field(d) {
                    Some(i) => l.fields[i].noise_diffs += 1,
                    None => l.overflow[d.kind as usize].1 += 1,
                }
            }
            let mut out = Vec::new();
            l.release(rule, &mut out);
            out
        })
    }

    /// Forgets what was learned of `route`: a rollout's mirror step judges its canary on its own pairs
    /// and noise, not on an earlier step's or attempt's.
    pub fn reset(&self, route: &str) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.remove(route);
    }

    /// The report of one route (`GET /v1/routes/{name}/mirror/fields`), `None` before its first pair.
    pub fn report(&self, route: &str, rule: &Rule) -> Option<Report> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.get(route).map(|l| report(route, l, rule))
    }

    /// The report of one route mirroring to `target`: empty before its first pair.
    pub fn report_or_empty(&self, route: &str, target: &str, rule: &Rule) -> Report {
        self.report(route, rule)
            .unwrap_or_else(|| report(route, &Ledger::new(target), rule))
    }

    /// Per route: differences counted by kind ([`Kind::ALL`] order), and significant fields now.
    pub fn totals(&self, rules: &dyn Fn(&str) -> Option<Rule>) -> Vec<(String, [u64; 4], usize)> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = routes
            .iter()
            .map(|(name, l)| {
                let mut kinds = [0u64; 4];
                for f in &l.fields {
                    kinds[f.kind as usize] += f.shadow_diffs;
                }
                for (k, (shadow, _)) in kinds.iter_mut().zip(l.overflow) {
                    *k += shadow;
                }
                let learned = rules(name).filter(|rule| l.learned(rule));
                let significant = learned.map_or(0, |rule| {
                    (0..l.fields.len())
                        .filter(|&i| l.significant(i, &rule))
                        .count()
                });
                (name.clone(), kinds, significant)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// One field of a route's report.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "MirrorField")]
pub struct FieldReport {
    pub path: String,
    pub kind: Kind,
    pub shadow_diffs: u64,
    pub noise_diffs: u64,
    /// Shares of the shadow pairs and of the noise pairs in which it differed, 0–1.
    pub shadow_rate: f64,
    pub noise_rate: f64,
    /// Its shadow differences exceed its noise: it counts against the canary.
    pub significant: bool,
    /// It differs between two answers of the baseline itself.
    pub noisy: bool,
    pub example: Option<Example>,
}

/// Differences at fields beyond [`MAX_FIELDS`].
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Overflow {
    pub shadow_diffs: u64,
    pub noise_diffs: u64,
}

/// A route's per-field differences and the schema drift they show.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "MirrorFields")]
pub struct Report {
    pub route: String,
    pub target: String,
    /// Shadow pairs compared, and noise pairs.
    pub pairs: u64,
    pub noise_pairs: u64,
    /// Enough noise pairs were seen to trust the noise rates (always, with `noise_percent: 0`).
    pub noise_learned: bool,
    /// Significant fields first, then by shadow differences.
    pub fields: Vec<FieldReport>,
    pub overflow: Overflow,
    /// How the shadow's answers differ in shape, in words (significant fields only).
    pub drift: Vec<String>,
}

fn report(route: &str, l: &Ledger, rule: &Rule) -> Report {
    let rate = |k: u64, n: u64| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let mut fields: Vec<FieldReport> = l
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| FieldReport {
            path: f.path.clone(),
            kind: f.kind,
            shadow_diffs: f.shadow_diffs,
            noise_diffs: f.noise_diffs,
            shadow_rate: rate(f.shadow_diffs, l.pairs),
            noise_rate: rate(f.noise_diffs, l.noise_pairs),
            significant: l.learned(rule) && l.significant(i, rule),
            noisy: f.noise_diffs > 0,
            example: f.example.clone(),
        })
        .collect();
    fields.sort_by(|a, b| {
        b.significant
            .cmp(&a.significant)
            .then(b.shadow_diffs.cmp(&a.shadow_diffs))
            .then(a.path.cmp(&b.path))
    });
    let (shadow, noise) = l
        .overflow
        .iter()
        .fold((0, 0), |(s, n), (a, b)| (s + a, n + b));
    let drift = drift(&l.target, l, &fields);
    Report {
        route: route.to_string(),
        target: l.target.clone(),
        pairs: l.pairs,
        noise_pairs: l.noise_pairs,
        noise_learned: l.learned(rule),
        fields,
        overflow: Overflow {
            shadow_diffs: shadow,
            noise_diffs: noise,
        },
        drift,
    }
}

/// The schema drift of the significant body fields, in words: added, removed (a removal and an
/// addition side by side, of one type and as often, read as a rename) and changed types.
fn drift(target: &str, l: &Ledger, fields: &[FieldReport]) -> Vec<String> {
    let types = |path: &str, kind: Kind| {
        l.index
            .get(&(path.to_string(), kind))
            .map_or((None, None), |&i| l.fields[i].types)
    };
    let body = |f: &&FieldReport| f.significant && f.path.starts_with('/');
    let added: Vec<&FieldReport> = fields
        .iter()
        .filter(body)
        .filter(|f| f.kind == Kind::Added)
        .collect();
    let mut renamed = Vec::new();
    let mut out = Vec::new();
    for f in fields.iter().filter(body) {
        let (p, s) = types(&f.path, f.kind);
        let show = |t: Option<&'static str>| t.unwrap_or("unknown");
        match f.kind {
            Kind::Removed => {
                let twin = added.iter().find(|a| {
                    !renamed.contains(&a.path)
                        && parent(&a.path) == parent(&f.path)
                        && types(&a.path, Kind::Added).1 == p
                        && a.shadow_diffs == f.shadow_diffs
                });
                match twin {
                    Some(a) => {
                        renamed.push(a.path.clone());
                        out.push(format!(
                            "{target} renames {} to {} ({})",
                            f.path,
                            a.path,
                            show(p)
                        ));
                    }
                    None => out.push(format!("{target} removes {}", f.path)),
                }
            }
            Kind::Type => out.push(format!(
                "{target} changes {} from {} to {}",
                f.path,
                show(p),
                show(s)
            )),
            Kind::Added | Kind::Value => {}
        }
    }
    for a in added {
        if !renamed.contains(&a.path) {
            let (_, s) = types(&a.path, Kind::Added);
            out.push(format!(
                "{target} adds {} ({})",
                a.path,
                s.unwrap_or("unknown")
            ));
        }
    }
    out
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

#[cfg(test)]
mod tests;

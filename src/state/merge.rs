//! The three-way merge of a reload (SPEC §1): the file's own changes (file minus *base*, the file
//! last applied) are applied onto the live config, so that nothing changed live (by the admin API or
//! a rollout) is undone by an unrelated edit of the file.
//!
//! A config is compared in *places*: per route (by name) each top-level setting, with `split`,
//! `blue_green` and `mirror` compared per key (`split.targets`, `blue_green.live`,
//! `mirror.percent`, …); the order of the routes; and every other top-level section as a whole. For
//! each place:
//!
//! - the file left it as the base had it: the live value stays;
//! - the file changed it and live still has the base's (or already the file's) value: the file's
//!   value is taken;
//! - both changed it, differently: a conflict. Without `force` the reload is refused with one line
//!   per conflict; with it, the file's value is taken and the place is named as undone.

use crate::config::Config;
use serde_json::{Map, Value};

/// A place changed both in the file and live since the base.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The route, or `None` for a top-level section.
    pub route: Option<String>,
    /// The setting, e.g. `split.targets`, or a section such as `upstreams` (empty: the whole route).
    pub setting: String,
    pub file: String,
    pub live: String,
}

/// What a merge produced.
#[derive(Debug, Clone)]
pub struct Merged {
    pub config: Config,
    /// Places the file changed and the merge took, e.g. `routes[api].timeout`.
    pub taken: Vec<String>,
    /// Places changed both ways: conflicts (without force), or undone (with it).
    pub conflicts: Vec<Conflict>,
}

impl Conflict {
    pub fn place(&self) -> String {
        match &self.route {
            Some(r) if self.setting.is_empty() => format!("routes[{r}]"),
            Some(r) => format!("routes[{r}].{}", self.setting),
            None => self.setting.clone(),
        }
    }
}

/// Keys of a route compared key by key.
const NESTED: [&str; 3] = ["split", "blue_green", "mirror"];

struct Merger {
    force: bool,
    taken: Vec<String>,
    conflicts: Vec<Conflict>,
}

impl Merger {
    /// One place: the value the merge keeps (`None`: absent).
    fn pick(
        &mut self,
        route: Option<&str>,
        setting: &str,
        base: Option<&Value>,
        file: Option<&Value>,
        live: Option<&Value>,
    ) -> Option<Value> {
        if file == base || file == live {
            return live.cloned();
        }
        let place = Conflict {
            route: route.map(str::to_string),
            setting: setting.to_string(),
            file: words(file),
            live: words(live),
        };
        if live == base {
            self.taken.push(place.place());
            return file.cloned();
        }
        self.conflicts.push(place);
        if self.force {
            file.cloned()
        } else {
            live.cloned()
        }
    }

    fn route(&mut self, name: &str, b: Option<&Value>, f: &Value, l: Option<&Value>) -> Value {
        let (Some(b), Some(l)) = (b, l) else {
            // New in the file (or in live): the route as a whole.
            return self
                .pick(Some(name), "", b, Some(f), l)
                .unwrap_or(Value::Null);
        };
        let keys = union(&[b, f, l]);
        let mut out = Map::new();
        for key in keys {
            let (bk, fk, lk) = (b.get(&key), f.get(&key), l.get(&key));
            let nested = NESTED.contains(&key.as_str())
                && [bk, fk, lk].iter().all(|v| v.is_some_and(Value::is_object));
            let value = if nested {
                let (bk, fk, lk) = (
                    bk.unwrap_or(&Value::Null),
                    fk.unwrap_or(&Value::Null),
                    lk.unwrap_or(&Value::Null),
                );
                let mut inner = Map::new();
                for sub in union(&[bk, fk, lk]) {
                    let setting = format!("{key}.{sub}");
                    if let Some(v) = self.pick(
                        Some(name),
                        &setting,
                        bk.get(&sub),
                        fk.get(&sub),
                        lk.get(&sub),
                    ) {
                        inner.insert(sub, v);
                    }
                }
                Some(Value::Object(inner))
            } else {
                self.pick(Some(name), &key, bk, fk, lk)
            };
            if let Some(v) = value {
                out.insert(key, v);
            }
        }
        Value::Object(out)
    }

    fn routes(&mut self, base: &Value, file: &Value, live: &Value) -> Value {
        let (b, f, l) = (by_name(base), by_name(file), by_name(live));
        let order = |v: &[(String, Value)]| {
            v.iter()
                .map(|(n, _)| Value::String(n.clone()))
                .collect::<Vec<_>>()
        };
        let (bo, fo, lo) = (
            Value::Array(order(&b)),
            Value::Array(order(&f)),
            Value::Array(order(&l)),
        );
        let names = self.pick(
            None,
            "routes (their list and order)",
            Some(&bo),
            Some(&fo),
            Some(&lo),
        );
        let find =
            |v: &[(String, Value)], n: &str| v.iter().find(|(m, _)| m == n).map(|(_, r)| r.clone());
        let mut out = Vec::new();
        for name in names
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = name.as_str() else { continue };
            let (br, fr, lr) = (find(&b, name), find(&f, name), find(&l, name));
            let route = match (&fr, &lr) {
                (Some(fr), _) => self.route(name, br.as_ref(), fr, lr.as_ref()),
                // Kept live while the file removed it (a conflict on the list, decided above).
                (None, Some(lr)) => lr.clone(),
                (None, None) => continue,
            };
            if !route.is_null() {
                out.push(route);
            }
        }
        // A route the file removed that was changed live since the base is a conflict too (the
        // merge takes the file's list only when forced; unforced, any conflict refuses the reload).
        for (name, br) in &b {
            if find(&f, name).is_some() {
                continue;
            }
            if let Some(lr) = find(&l, name).filter(|lr| lr != br) {
                self.conflicts.push(Conflict {
                    route: Some(name.clone()),
                    setting: "".into(),
                    file: "removed".into(),
                    live: words(Some(&lr)),
                });
            }
        }
        Value::Array(out)
    }
}

/// Applies `file`'s changes since `base` onto `live`. With `force`, conflicts take the file's value
/// (and are still listed, as undone).
pub fn three_way(
    base: &Config,
    file: &Config,
    live: &Config,
    force: bool,
) -> Result<Merged, super::StateError> {
    let to = serde_json::to_value::<&Config>;
    let (b, f, l) = (to(base)?, to(file)?, to(live)?);
    let mut m = Merger {
        force,
        taken: Vec::new(),
        conflicts: Vec::new(),
    };
    let mut out = Map::new();
    for key in union(&[&b, &f, &l]) {
        let value = if key == "routes" {
            let empty = Value::Array(Vec::new());
            let get = |v: &Value| v.get("routes").cloned().unwrap_or(empty.clone());
            Some(m.routes(&get(&b), &get(&f), &get(&l)))
        } else {
            m.pick(None, &key, b.get(&key), f.get(&key), l.get(&key))
        };
        if let Some(v) = value {
            out.insert(key, v);
        }
    }
    let config: Config = serde_json::from_value(Value::Object(out))?;
    Ok(Merged {
        config,
        taken: m.taken,
        conflicts: m.conflicts,
    })
}

fn union(values: &[&Value]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for v in values {
        for k in v.as_object().into_iter().flat_map(|o| o.keys()) {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys
}

fn by_name(routes: &Value) -> Vec<(String, Value)> {
    routes
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let name = r
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            (name, r.clone())
        })
        .collect()
}

fn words(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "absent".into(),
        Some(v) => {
            let text = serde_json::to_string(v).unwrap_or_default();
            if text.len() > 120 {
                format!(
                    "{}…",
                    &text[..text.char_indices().nth(117).map_or(text.len(), |(i, _)| i)]
                )
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;

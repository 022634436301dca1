//! A test's configuration, section by section: what each test would otherwise write out as YAML of its
//! own (an admin listener and its tokens, the upstreams, the routes).
//!
//! ```ignore
//! let yaml = Fixture::new()
//!     .admin(admin, &[("ops", OPS)])
//!     .upstream("v1", v1.addr)
//!     .route("name: api\nsplit: {targets: {v1: 100}}")
//!     .yaml();
//! ```

use super::sha256_hex;
use std::fmt::Display;

#[derive(Debug, Clone, Default)]
pub struct Fixture {
    admin: Option<String>,
    sections: Vec<String>,
    upstreams: Vec<String>,
    routes: Vec<String>,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::default()
    }

    /// `admin.listen` on `listen`, with these tokens (name, token in clear; the config gets their
    /// SHA-256).
    pub fn admin(mut self, listen: impl Display, tokens: &[(&str, &str)]) -> Fixture {
        let tokens: Vec<String> = tokens
            .iter()
            .map(|(name, token)| format!("{name}: {}", sha256_hex(token)))
            .collect();
        self.admin = Some(format!(
            "admin:\n  listen: \"{listen}\"\n  tokens: {{{}}}\n",
            tokens.join(", ")
        ));
        self
    }

    /// An upstream with one backend.
    pub fn upstream(self, name: &str, backend: impl Display) -> Fixture {
        self.upstream_with(name, &format!("backends: [\"{backend}\"]"))
    }

    /// An upstream with these settings, written as a flow mapping's inside (`backends: [...], ...`).
    pub fn upstream_with(mut self, name: &str, settings: &str) -> Fixture {
        self.upstreams.push(format!("  {name}: {{{settings}}}\n"));
        self
    }

    /// A route: its keys as block YAML at the item's level (`name: api\nsplit: {...}`).
    pub fn route(mut self, yaml: &str) -> Fixture {
        let mut lines = yaml.trim_end().lines();
        let mut item = format!("  - {}\n", lines.next().unwrap_or_default());
        for line in lines {
            item.push_str(&format!("    {line}\n"));
        }
        self.routes.push(item);
        self
    }

    /// Any other top-level section, as written (`clients:\n  keys: {...}\n`).
    pub fn section(mut self, yaml: &str) -> Fixture {
        if yaml.trim().is_empty() {
            return self;
        }
        let mut text = yaml.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        self.sections.push(text);
        self
    }

    /// The configuration as YAML.
    pub fn yaml(&self) -> String {
        let mut out = self.admin.clone().unwrap_or_default();
        for s in &self.sections {
            out.push_str(s);
        }
        if !self.upstreams.is_empty() {
            out.push_str("upstreams:\n");
            out.extend(self.upstreams.iter().map(String::as_str));
        }
        if !self.routes.is_empty() {
            out.push_str("routes:\n");
            out.extend(self.routes.iter().map(String::as_str));
        }
        out
    }
}

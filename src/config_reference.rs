//! `forewarn config reference`: every configuration key with its type, default, environment
//! variable, description and whether it is a secret, in Markdown. Generated from the config
//! structs themselves (their JSON Schema, derived with `schemars`: the doc comment of each field
//! is its description, `Config::default()` its default), so it cannot drift from the code;
//! `docs/config-reference.md` is this output, and a test fails when it is not current.

use serde_json::{Map, Value};

/// Marks a schema as a secret (see [`crate::secret::Secret`]'s `JsonSchema`).
pub const SECRET_MARK: &str = "x-secret";

/// One documented key.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// Dotted path: `broker.url`, `notify.sms.auth_token`.
    pub path: Vec<String>,
    pub kind: String,
    /// The default as TOML, or `None` when unset by default.
    pub default: Option<String>,
    pub description: String,
    pub secret: bool,
}

impl Key {
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }
    /// `FOREWARN__SECTION__KEY` (figment splits on `__` and lower-cases).
    pub fn env_var(&self) -> String {
        let mut v = String::from("FOREWARN");
        for p in &self.path {
            v.push_str("__");
            v.push_str(&p.to_uppercase());
        }
        v
    }
}

/// A table of keys: a section (`[api]`) or a table inside one (`[notify.sms]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub path: Vec<String>,
    pub description: String,
    /// An optional table (`Option<…>`): absent by default.
    pub optional: bool,
    pub keys: Vec<Key>,
}

/// The configuration's JSON Schema, every sub-schema inlined.
pub fn schema() -> Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| {
        s.inline_subschemas = true;
    });
    let schema = settings
        .into_generator()
        .into_root_schema_for::<crate::config::Config>();
    schema.to_value()
}

/// Every table and key, in declaration order.
pub fn tables() -> Vec<Table> {
    let root = schema();
    let mut out = Vec::new();
    if let Some(props) = root.get("properties").and_then(Value::as_object) {
        for (name, section) in props {
            walk(vec![name.clone()], section, &mut out);
        }
    }
    out
}

/// The object schema inside `s` (through an `Option`'s `anyOf`/`oneOf` with `null`), if `s`
/// describes a table with named keys.
fn table_schema(s: &Value) -> Option<&Map<String, Value>> {
    if s.get("properties").is_some_and(Value::is_object) {
        return s.as_object();
    }
    for alt in ["anyOf", "oneOf"] {
        if let Some(list) = s.get(alt).and_then(Value::as_array) {
            let non_null: Vec<&Value> = list.iter().filter(|v| !is_null(v)).collect();
            if let [only] = non_null.as_slice() {
                if only.get("properties").is_some_and(Value::is_object) {
                    return only.as_object();
                }
            }
        }
    }
    None
}

/// Whether `s` also admits `null` (an `Option`).
fn nullable(s: &Value) -> bool {
    let in_type = match s.get("type") {
        Some(Value::Array(a)) => a.iter().any(|t| t == "null"),
        _ => false,
    };
    let in_alternatives = ["anyOf", "oneOf"].iter().any(|alt| {
        s.get(*alt)
            .and_then(Value::as_array)
            .is_some_and(|list| list.iter().any(is_null))
    });
    in_type || in_alternatives
}

fn is_null(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("null")
}

fn walk(path: Vec<String>, s: &Value, out: &mut Vec<Table>) {
    let Some(obj) = table_schema(s) else {
        return;
    };
    let mut table = Table {
        path: path.clone(),
        description: one_line(
            s.get("description")
                .or_else(|| obj.get("description"))
                .and_then(Value::as_str)
                .unwrap_or(""),
        ),
        keys: Vec::new(),
        optional: nullable(s),
    };
    let defaults = s.get("default").or_else(|| obj.get("default"));
    let mut nested = Vec::new();
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, field) in props {
            let mut p = path.clone();
            p.push(name.clone());
            if table_schema(field).is_some() {
                nested.push((p, field));
                continue;
            }
            let default = field
                .get("default")
                .or_else(|| defaults.and_then(|d| d.get(name)))
                .and_then(toml_value);
            table.keys.push(Key {
                path: p,
                kind: kind(field, 0),
                default,
                description: one_line(
                    field
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                ),
                secret: has_secret(field),
            });
        }
    }
    out.push(table);
    for (p, field) in nested {
        walk(p, field, out);
    }
}

/// Doc comments joined into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn has_secret(v: &Value) -> bool {
    match v {
        Value::Object(m) => {
            m.get(SECRET_MARK).and_then(Value::as_bool) == Some(true)
                || m.iter()
                    .any(|(k, x)| k != "default" && k != "examples" && has_secret(x))
        }
        Value::Array(a) => a.iter().any(has_secret),
        _ => false,
    }
}

/// A short, readable type: `string`, `duration`, `integer ≥ 0`, `list of string`,
/// `one of "a", "b"`, `table of string`.
fn kind(v: &Value, depth: usize) -> String {
    if depth > 4 {
        return "value".into();
    }
    if let Some(vals) = v.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = vals.iter().filter_map(toml_value).collect();
        return format!("one of {}", names.join(", "));
    }
    if let Some(c) = v.get("const") {
        return toml_value(c).unwrap_or_else(|| "value".into());
    }
    for alt in ["anyOf", "oneOf"] {
        if let Some(list) = v.get(alt).and_then(Value::as_array) {
            let mut parts: Vec<String> = list
                .iter()
                .filter(|x| !is_null(x))
                .map(|x| kind(x, depth + 1))
                .collect();
            parts.dedup();
            return parts.join(" or ");
        }
    }
    let types: Vec<&str> = match v.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => vec![],
    };
    let mut parts = Vec::new();
    for t in types {
        parts.push(match t {
            "string" => match v.get("format").and_then(Value::as_str) {
                Some("duration") => "duration (`500ms`, `30s`, `5m`, `24h`, `7d`)".to_string(),
                Some(f) if f != "password" => format!("string ({f})"),
                _ => "string".into(),
            },
            "integer" => match v.get("minimum").and_then(Value::as_f64) {
                Some(m) if m >= 0.0 => "integer ≥ 0".into(),
                _ => "integer".into(),
            },
            "number" => "number".into(),
            "boolean" => "boolean".into(),
            "array" => match v.get("items") {
                Some(items) => format!("list of {}", kind(items, depth + 1)),
                None => "list".into(),
            },
            "object" => match v.get("properties").and_then(Value::as_object) {
                Some(props) => {
                    let names: Vec<&str> = props.keys().map(String::as_str).collect();
                    format!("table {{{}}}", names.join(", "))
                }
                None => match v.get("additionalProperties") {
                    Some(x) if x.is_object() => format!("table of {}", kind(x, depth + 1)),
                    _ => "table".into(),
                },
            },
            other => other.to_string(),
        });
    }
    if parts.is_empty() {
        "value".into()
    } else {
        parts.join(" or ")
    }
}

/// A JSON default as TOML (`"text"`, `30`, `true`, `["a", "b"]`); `None` for null.
fn toml_value(v: &Value) -> Option<String> {
    if v.is_null() {
        return None;
    }
    if let Value::Object(m) = v {
        if m.is_empty() {
            return Some("{}".into());
        }
    }
    let t: toml::Value = serde_json::from_value(v.clone()).ok()?;
    Some(t.to_string())
}

/// Text for a Markdown table cell: one line, `|` escaped.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The reference as Markdown.
pub fn markdown() -> String {
    let mut md = String::new();
    md.push_str(
        "# Configuration reference\n\n\
         <!-- Generated by `forewarn config reference` from the configuration structs. \
         Do not edit: regenerate with `cargo run -- config reference > docs/config-reference.md`. -->\n\n\
         Every key below can be set in the TOML file given with `--config` (the annotated default \
         is `config/forewarn.toml`) or by its environment variable, which wins over the file. \
         Unknown keys are an error. `forewarn serve --print-config` prints the effective \
         configuration with secrets shown as `***`; `forewarn serve --check-config` checks it.\n\n\
         Secrets are better set by environment variable than written in the file. Two more \
         variables exist for convenience: `FOREWARN_API_TOKEN` adds an API token with every \
         scope, and `FOREWARN_DISPATCH_SECRET` sets `dispatch.webhook_secret`.\n\n\
         A default of *unset* means the key is optional and off unless given.\n",
    );
    for t in tables() {
        if t.keys.is_empty() {
            continue;
        }
        md.push_str(&format!("\n## `[{}]`\n\n", t.path.join(".")));
        if !t.description.is_empty() {
            md.push_str(&format!("{}\n\n", t.description));
        }
        if t.optional {
            md.push_str(
                "An optional table, absent by default (what it configures is off); the defaults \
                 below apply once it is given.\n\n",
            );
        }
        md.push_str("| key | type | default | environment variable | secret | description |\n");
        md.push_str("|---|---|---|---|---|---|\n");
        for k in &t.keys {
            let name = k.path.last().map(String::as_str).unwrap_or("");
            let default = match &k.default {
                Some(d) => format!("`{}`", cell(d)),
                None => "*unset*".into(),
            };
            md.push_str(&format!(
                "| `{}` | {} | {} | `{}` | {} | {} |\n",
                name,
                cell(&k.kind),
                default,
                k.env_var(),
                if k.secret { "yes" } else { "" },
                cell(&k.description),
            ));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Key {
        let all: Vec<Key> = tables().into_iter().flat_map(|t| t.keys).collect();
        all.into_iter()
            .find(|k| k.dotted() == path)
            .unwrap_or_else(|| panic!("{path} not in the reference"))
    }

    #[test]
    fn keys_carry_type_default_env_var_and_secrecy_from_the_structs() {
        let url = key("broker.url");
        assert_eq!(url.kind, "string");
        assert_eq!(url.default.as_deref(), Some("\"mqtt://127.0.0.1:1883\""));
        assert_eq!(url.env_var(), "FOREWARN__BROKER__URL");
        assert!(url.description.contains("mqtt://"), "{url:?}");
        assert!(!url.secret);
        let password = key("broker.password");
        assert!(password.secret);
        assert_eq!(password.default, None);
        let grace = key("shutdown.grace");
        assert!(grace.kind.starts_with("duration"), "{grace:?}");
        assert_eq!(grace.default.as_deref(), Some("\"10s\""));
        assert!(key("api.tokens").secret);
        let tables = tables();
        let table = |p: &str| tables.iter().find(|t| t.path.join(".") == p).unwrap();
        assert!(table("notify.sms").optional);
        assert!(!table("notify.routing").optional);
        assert!(!table("api").optional);
    }

    /// A key without a doc comment would have an empty line in the reference: give the field a
    /// `///` line saying what it does.
    #[test]
    fn every_key_has_a_description() {
        for t in tables() {
            for k in t.keys {
                assert!(
                    !k.description.is_empty(),
                    "config key {} has no doc comment on its field",
                    k.dotted()
                );
            }
        }
    }
}

//! Credentials in an image's config: `Env`, labels, the build history's `created_by` lines (ENV,
//! ARG, BuildKit's `RUN |N K=V …`, legacy `#(nop)`), and BuildKit provenance attestations that
//! record build-argument values. Key names are judged the way BuildKit's SecretsUsedInArgOrEnv
//! check judges them, values by the content shapes.

use std::sync::LazyLock;

use regex::Regex;

use super::{
    content,
    finding::{Category, Location, Severity, Source},
    image::{History, ImageConfig},
};

/// One credential-looking value in the config, before the image's own fields are added.
pub struct ConfigHit {
    pub location: Location,
    pub history: Option<usize>,
    pub rule: &'static str,
    pub severity: Severity,
    pub category: Category,
    pub public_prefix: String,
    pub value: Vec<u8>,
}

/// BuildKit's rule: a name part (split on `_`) that says secret, unless a part says public.
pub fn secret_name(name: &str) -> bool {
    static SECRET: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pass|pwd|secret|token)(?:_|$)")
            .unwrap()
    });
    static PUBLIC: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?i)(?:_|^)public(?:_|$)").unwrap());
    SECRET.is_match(name) && !PUBLIC.is_match(name)
}

/// The history entry behind each layer: entries that are not `empty_layer` map, in order, to
/// the layers. `None` when the counts differ (the mapping is then unreliable and said so).
pub fn layer_history(history: &[History], layers: usize) -> Option<Vec<usize>> {
    let non_empty: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.empty_layer)
        .map(|(i, _)| i)
        .collect();
    (non_empty.len() == layers).then_some(non_empty)
}

/// The instruction keyword of a `created_by` line: BuildKit writes `RUN /bin/sh -c …`,
/// `COPY … # buildkit`, `ENV K=V`; the legacy builder `/bin/sh -c #(nop)  COPY …` or
/// `/bin/sh -c <command>` for RUN.
pub fn instruction(created_by: &str) -> String {
    let text = created_by.trim();
    let text = text
        .strip_prefix("/bin/sh -c ")
        .map(|rest| match rest.trim_start().strip_prefix("#(nop)") {
            Some(nop) => nop.trim_start().to_string(),
            None => format!("RUN {rest}"),
        })
        .unwrap_or_else(|| text.to_string());
    let word = text.split_whitespace().next().unwrap_or("");
    if word.chars().all(|c| c.is_ascii_uppercase()) && !word.is_empty() {
        word.to_string()
    } else {
        "RUN".to_string()
    }
}

fn named_value(
    name: &str,
    value: &str,
    location: Location,
    history: Option<usize>,
    out: &mut Vec<ConfigHit>,
) {
    if value.is_empty() || !secret_name(name) {
        return;
    }
    out.push(ConfigHit {
        location,
        history,
        rule: "secret-named-variable",
        severity: Severity::High,
        category: Category::Credential,
        public_prefix: format!("{name}="),
        value: value.as_bytes().to_vec(),
    });
}

fn shaped_values(
    text: &str,
    location: impl Fn() -> Location,
    history: Option<usize>,
    out: &mut Vec<ConfigHit>,
) {
    for hit in content::scan(text.as_bytes()) {
        let example = content::is_known_example(hit.value);
        out.push(ConfigHit {
            location: location(),
            history,
            rule: hit.rule,
            severity: if example {
                Severity::Low
            } else {
                Severity::High
            },
            category: if example {
                Category::KnownExample
            } else {
                Category::Credential
            },
            public_prefix: hit.public_prefix,
            value: hit.value.to_vec(),
        });
    }
}

/// `K=V` pairs an ENV/ARG history line or a `RUN |N K=V …` prefix sets.
fn history_assignments(created_by: &str) -> Vec<(String, String)> {
    let text = created_by.trim();
    let text = text
        .strip_prefix("/bin/sh -c #(nop)")
        .map(str::trim_start)
        .unwrap_or(text);
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or("");
    let pair = |w: &str| {
        w.split_once('=')
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
    };
    match first {
        "ENV" | "ARG" => {
            let rest = text[first.len()..].trim();
            // `ENV K=V K2=V2`, or the old `ENV K V` form (one pair, the value may have spaces).
            if rest.contains('=') {
                rest.split_whitespace().filter_map(pair).collect()
            } else {
                rest.split_once(char::is_whitespace)
                    .map(|(k, v)| vec![(k.to_string(), v.trim().to_string())])
                    .unwrap_or_default()
            }
        }
        "RUN" => {
            // BuildKit records the build arguments a RUN used: `RUN |2 A=1 B=2 /bin/sh -c …`.
            let Some(count) = words
                .next()
                .and_then(|w| w.strip_prefix('|'))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                return Vec::new();
            };
            words.take(count.min(256)).filter_map(pair).collect()
        }
        _ => Vec::new(),
    }
}

pub fn scan(config: &ImageConfig) -> Vec<ConfigHit> {
    let mut out = Vec::new();
    let config_location = |key: &str| Location {
        source: Source::Config,
        layer: None,
        path: None,
        key: Some(key.to_string()),
    };
    if let Some(run) = &config.config {
        for entry in run.env.iter().flatten() {
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            named_value(name, value, config_location(name), None, &mut out);
            if !secret_name(name) {
                shaped_values(value, || config_location(name), None, &mut out);
            }
        }
        for (name, value) in run.labels.iter().flatten() {
            named_value(name, value, config_location(name), None, &mut out);
            if !secret_name(name) {
                shaped_values(value, || config_location(name), None, &mut out);
            }
        }
    }
    let layers = config.rootfs.as_ref().map_or(0, |r| r.diff_ids.len());
    let layer_of = layer_history(&config.history, layers);
    for (index, entry) in config.history.iter().enumerate() {
        let Some(created_by) = &entry.created_by else {
            continue;
        };
        let layer = layer_of
            .as_ref()
            .and_then(|map| map.iter().position(|h| *h == index));
        let location = |key: Option<String>| Location {
            source: Source::History,
            layer,
            path: None,
            key,
        };
        let assignments = history_assignments(created_by);
        for (name, value) in &assignments {
            named_value(
                name,
                value,
                location(Some(name.clone())),
                Some(index),
                &mut out,
            );
        }
        // Values of any shape anywhere in the line (a token on a RUN's command line), unless
        // the same value was already reported under its name.
        let named: Vec<&[u8]> = out
            .iter()
            .filter(|h| h.history == Some(index))
            .map(|h| h.value.as_slice())
            .collect::<Vec<_>>();
        let mut shaped = Vec::new();
        shaped_values(created_by, || location(None), Some(index), &mut shaped);
        shaped.retain(|h| {
            !named
                .iter()
                .any(|n| n.windows(h.value.len()).any(|w| w == h.value))
        });
        out.extend(shaped);
    }
    out
}

/// Build arguments recorded in a provenance attestation (in-toto statement; SLSA v0.2
/// `invocation.parameters.args`, SLSA v1 `externalParameters.request.args`): any object key
/// `build-arg:NAME` is judged like an ARG.
pub fn scan_attestation(statement: &serde_json::Value) -> Vec<ConfigHit> {
    let mut out = Vec::new();
    let mut stack = vec![statement];
    let mut visited = 0;
    while let Some(value) = stack.pop() {
        visited += 1;
        if visited > 100_000 {
            break;
        }
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    if let (Some(name), Some(text)) =
                        (key.strip_prefix("build-arg:"), child.as_str())
                    {
                        let location = Location {
                            source: Source::Attestation,
                            layer: None,
                            path: None,
                            key: Some(name.to_string()),
                        };
                        named_value(name, text, location, None, &mut out);
                    }
                    stack.push(child);
                }
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_judged_like_buildkit() {
        for name in [
            "GITHUB_TOKEN",
            "DB_PASSWORD",
            "AWS_SECRET_ACCESS_KEY",
            "apikey",
            "NPM_AUTH",
        ] {
            assert!(secret_name(name), "{name}");
        }
        for name in ["PATH", "PUBLIC_KEY", "TOKENIZER", "KEYBOARD", "HOME"] {
            assert!(!secret_name(name), "{name}");
        }
    }

    #[test]
    fn history_lines_give_their_assignments_and_instruction() {
        assert_eq!(
            history_assignments("ARG NPM_TOKEN=abc"),
            [("NPM_TOKEN".to_string(), "abc".to_string())]
        );
        assert_eq!(
            history_assignments("/bin/sh -c #(nop)  ENV API_KEY=xyz"),
            [("API_KEY".to_string(), "xyz".to_string())]
        );
        assert_eq!(
            history_assignments("RUN |2 A=1 DB_PASSWORD=hunter2 /bin/sh -c make"),
            [
                ("A".to_string(), "1".to_string()),
                ("DB_PASSWORD".to_string(), "hunter2".to_string())
            ]
        );
        assert_eq!(instruction("/bin/sh -c #(nop) COPY file:abc in / "), "COPY");
        assert_eq!(instruction("/bin/sh -c apt-get update"), "RUN");
        assert_eq!(
            instruction("COPY creds /root/.aws/credentials # buildkit"),
            "COPY"
        );
        assert_eq!(instruction("RUN |1 T=x /bin/sh -c true"), "RUN");
    }
}

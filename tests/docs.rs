//! The documentation held to the code: every variable the functions read is
//! in the configuration table and every one it names is read; every template
//! parameter and every setting is documented; every alarm has a runbook entry; the cost table
//! follows BENCHMARKS.md and the template; every relative link resolves;
//! the README stays short.
//!
//! Each check is a function over text, so that the tests at the end can show
//! it failing on a broken input.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use terra_sink::config::Config;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The templates a user deploys; each parameter and setting must be
/// documented.
const TEMPLATES: &[&str] = &["template.yaml", "kafka/template.yaml"];
const CONFIGURATION: &str = "docs/configuration.md";
const OPERATIONS: &str = "docs/operations.md";

// ---- environment variables --------------------------------------------

/// Every variable `Config` asks for, with the variables set whose presence
/// makes it read others (a bucket's prefix, a source bucket's owner, the
/// X-Ray daemon's address).
fn variables_the_functions_read() -> BTreeSet<String> {
    let asked = RefCell::new(BTreeSet::new());
    let config = Config::from_lookup(|var| {
        asked.borrow_mut().insert(var.to_owned());
        match var {
            "TERRA_S3_BUCKET" | "TERRA_DYNAMODB_TABLE" => Some(Ok("terra-sink-example".into())),
            "TERRA_SOURCE_BUCKETS" => Some(Ok("terra-source".into())),
            "TERRA_TRACING" => Some(Ok("xray".into())),
            "AWS_XRAY_DAEMON_ADDRESS" => Some(Ok("169.254.79.129:2000".into())),
            _ => None,
        }
    });
    assert!(config.is_ok(), "{config:?}");
    asked.into_inner()
}

/// The rows of the first table under `heading`, as their first cells'
/// backticked names (a cell may name several).
fn table_names(doc: &str, heading: &str) -> BTreeSet<String> {
    let mut lines = doc
        .lines()
        .skip_while(|line| line.trim() != heading)
        .skip(1);
    let mut names = BTreeSet::new();
    let mut in_table = false;
    for line in lines.by_ref() {
        if line.starts_with("#") {
            break;
        }
        if let Some(row) = line.strip_prefix('|') {
            in_table = true;
            let first_cell = row.split('|').next().unwrap_or_default();
            names.extend(backticked(first_cell));
        } else if in_table {
            break;
        }
    }
    names
}

fn backticked(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split('`').skip(1).step_by(2).map(str::to_owned)
}

/// Names a paragraph starting with `Retired:` mentions: read only to be
/// refused, so documented there rather than in the table.
fn retired_names(doc: &str) -> BTreeSet<String> {
    doc.split("\n\n")
        .filter(|paragraph| paragraph.starts_with("Retired:"))
        .flat_map(backticked)
        .collect()
}

/// What is read but not documented, and documented but not read.
fn variable_drift(read: &BTreeSet<String>, doc: &str) -> (Vec<String>, Vec<String>) {
    let table = table_names(doc, "## Environment variables");
    let retired = retired_names(doc);
    let undocumented = read
        .iter()
        .filter(|v| !table.contains(*v) && !retired.contains(*v))
        .cloned()
        .collect();
    let unread = table
        .iter()
        .filter(|v| !read.contains(*v))
        .cloned()
        .collect();
    (undocumented, unread)
}

#[test]
fn every_variable_the_functions_read_is_documented_and_every_documented_one_is_read() {
    let variables = variables_the_functions_read();
    assert!(
        variables.contains("TERRA_S3_PREFIX") && variables.contains("TERRA_SOURCE_BUCKET_OWNER")
    );
    let (undocumented, unread) = variable_drift(&variables, &read(CONFIGURATION));
    assert!(
        undocumented.is_empty(),
        "read but not in {CONFIGURATION}: {undocumented:?}"
    );
    assert!(
        unread.is_empty(),
        "in {CONFIGURATION} but never read: {unread:?}"
    );
}

// ---- template parameters and alarms -----------------------------------

/// The keys of a top-level section of a CloudFormation template in YAML:
/// the lines indented by two spaces, up to the next top-level key.
fn section_keys(template: &str, section: &str) -> Vec<(String, Vec<String>)> {
    let mut keys: Vec<(String, Vec<String>)> = Vec::new();
    let mut inside = false;
    for line in template.lines() {
        if !line.starts_with(' ') && !line.is_empty() && !line.starts_with('#') {
            inside = line.trim_end() == format!("{section}:");
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(key) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !key.starts_with([' ', '#'])
        {
            keys.push((key.to_owned(), Vec::new()));
        } else if let Some((_, body)) = keys.last_mut() {
            body.push(line.trim().to_owned());
        }
    }
    keys
}

fn parameters(template: &str) -> BTreeSet<String> {
    section_keys(template, "Parameters")
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

fn alarms(template: &str) -> BTreeSet<String> {
    section_keys(template, "Resources")
        .into_iter()
        .filter(|(_, body)| body.iter().any(|l| l == "Type: AWS::CloudWatch::Alarm"))
        .map(|(name, _)| name)
        .collect()
}

fn parameter_drift(templates: &[String], doc: &str) -> (Vec<String>, Vec<String>) {
    let in_templates: BTreeSet<String> = templates.iter().flat_map(|t| parameters(t)).collect();
    let documented = table_names(doc, "## Template parameters");
    let undocumented = in_templates.difference(&documented).cloned().collect();
    let stale = documented.difference(&in_templates).cloned().collect();
    (undocumented, stale)
}

/// The settings a template reads out of its Settings parameter, with their
/// defaults: the keys under `Mappings: Defaults: Settings:`.
fn settings(template: &str) -> Vec<(String, String)> {
    let mut lines = template
        .lines()
        .skip_while(|line| *line != "Mappings:")
        .skip_while(|line| *line != "  Defaults:")
        .skip_while(|line| *line != "    Settings:")
        .skip(1);
    let mut found = Vec::new();
    for line in lines.by_ref() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.len() - trimmed.len() != 6 {
            break;
        }
        if let Some((key, value)) = trimmed.split_once(": ") {
            found.push((key.to_owned(), value.trim_matches('"').to_owned()));
        }
    }
    found
}

fn setting_drift(templates: &[String], doc: &str) -> (Vec<String>, Vec<String>) {
    let in_templates: BTreeSet<String> = templates
        .iter()
        .flat_map(|t| settings(t))
        .map(|(key, _)| key)
        .collect();
    let documented = table_names(doc, "## Settings");
    let undocumented = in_templates.difference(&documented).cloned().collect();
    let stale = documented.difference(&in_templates).cloned().collect();
    (undocumented, stale)
}

fn templates() -> Vec<String> {
    TEMPLATES.iter().map(|t| read(t)).collect()
}

#[test]
fn every_template_parameter_is_documented_and_every_documented_one_exists() {
    let templates = templates();
    assert!(parameters(&templates[0]).contains("Settings"));
    assert!(parameters(&templates[1]).contains("KafkaBrokers"));
    let (undocumented, stale) = parameter_drift(&templates, &read(CONFIGURATION));
    assert!(
        undocumented.is_empty(),
        "parameters missing from {CONFIGURATION}: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "{CONFIGURATION} documents parameters no template has: {stale:?}"
    );
}

/// Alarms without a `###` runbook heading naming them.
fn alarms_without_a_runbook(templates: &[String], runbook: &str) -> Vec<String> {
    let headings: BTreeSet<String> = headings(runbook)
        .filter(|(level, _)| *level == 3)
        .flat_map(|(_, text)| {
            text.split(" / ")
                .map(|name| name.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    templates
        .iter()
        .flat_map(|t| alarms(t))
        .filter(|alarm| !headings.contains(alarm))
        .collect()
}

#[test]
fn every_alarm_has_a_runbook_entry() {
    let templates = templates();
    assert!(alarms(&templates[0]).contains("DeadLetterQueueAlarm"));
    let missing = alarms_without_a_runbook(&templates, &read(OPERATIONS));
    assert!(
        missing.is_empty(),
        "alarms without a runbook entry in {OPERATIONS}: {missing:?}"
    );
}

#[test]
fn every_setting_is_documented_and_every_documented_one_exists() {
    let templates = templates();
    assert!(
        settings(&templates[0])
            .iter()
            .any(|(key, _)| key == "FunctionTimeout")
    );
    assert!(
        settings(&templates[1])
            .iter()
            .any(|(key, _)| key == "KafkaPartialBatch")
    );
    let (undocumented, stale) = setting_drift(&templates, &read(CONFIGURATION));
    assert!(
        undocumented.is_empty(),
        "settings missing from {CONFIGURATION}: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "{CONFIGURATION} documents settings no template has: {stale:?}"
    );
}

// ---- the cost table ---------------------------------------------------

fn setting_default(template: &str, name: &str) -> Option<String> {
    settings(template)
        .into_iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// The wall time BENCHMARKS.md's *As deployed* table gives for both sinks
/// at `memory_mb`'s CPU share, in ms.
fn benchmarked_wall_time_ms(benchmarks: &str, memory_mb: u32) -> Option<f64> {
    let section = benchmarks.split("### As deployed").nth(1)?;
    let table = section.split("\n###").next()?;
    let row = table.lines().find(|line| {
        line.starts_with(&format!("| {memory_mb} MB |")) && line.contains("| S3 + DynamoDB |")
    })?;
    let wall = row.split('|').nth(7)?.trim().strip_suffix(" ms")?;
    wall.parse().ok()
}

/// Records per second one Managed Instances process puts through with both
/// sinks, at the most invocations at once BENCHMARKS.md measured.
fn benchmarked_managed_instances_rps(benchmarks: &str) -> Option<f64> {
    fn cell(line: &str, n: usize) -> Option<&str> {
        line.split('|').nth(n).map(str::trim)
    }
    let section = benchmarks.split("### Lambda Managed Instances").nth(1)?;
    let table = section.split("\n###").next()?;
    table
        .lines()
        .filter(|line| line.starts_with("| S3 + DynamoDB |"))
        .filter_map(|line| {
            let at_once: u32 = cell(line, 2)?.parse().ok()?;
            let rps: f64 = cell(line, 5)?.parse().ok()?;
            Some((at_once, rps))
        })
        .max_by_key(|(at_once, _)| *at_once)
        .filter(|(at_once, _)| *at_once > 1)
        .map(|(_, rps)| rps)
}

/// The memory sizes the cost table prices: the template's, and one whole
/// vCPU's (Lambda gives a function one vCPU at 1,769 MB).
const ONE_VCPU_MB: u32 = 1769;

/// Why the cost table's Lambda duration lines do not follow from the
/// benchmark and the template's batch size and memory, if they do not.
fn cost_drift(template: &str, benchmarks: &str, operations: &str) -> Option<String> {
    let batch: u32 = setting_default(template, "SqsBatchSize")?.parse().ok()?;
    let memory_mb: u32 = setting_default(template, "FunctionMemory")?.parse().ok()?;
    let invocations = 1_000_000 / batch;
    for (memory_mb, line_start) in [
        (memory_mb, "| Lambda duration |".to_owned()),
        (
            ONE_VCPU_MB,
            format!(
                "| Lambda duration at {} MB |",
                thousands(u64::from(ONE_VCPU_MB))
            ),
        ),
    ] {
        let Some(wall_ms) = benchmarked_wall_time_ms(benchmarks, memory_mb) else {
            return Some(format!(
                "BENCHMARKS.md has no batch of both sinks at {memory_mb} MB"
            ));
        };
        let gb = f64::from(memory_mb) / 1024.0;
        let gb_seconds = f64::from(invocations) * wall_ms / 1000.0 * gb;
        let expected = format!(
            "{} GB-s ({} × {wall_ms} ms × {} GB)",
            thousands(gb_seconds.round() as u64),
            thousands(u64::from(invocations)),
            (gb * 1000.0).round() / 1000.0
        );
        let Some(line) = operations
            .lines()
            .find(|line| line.starts_with(&line_start))
        else {
            return Some(format!("no line starting {line_start:?}"));
        };
        if !line.contains(&expected) {
            return Some(format!("expected {expected:?} in {line:?}"));
        }
    }
    let Some(rps) = benchmarked_managed_instances_rps(benchmarks) else {
        return Some("BENCHMARKS.md has no Managed Instances row of both sinks at once".into());
    };
    let expected = format!(
        "{:.2} h of a 2-vCPU execution environment (1 000 000 ÷ {rps:.0} records per second)",
        1_000_000.0 / rps / 3600.0
    );
    let line_start = "| Managed Instances: instance time |";
    let Some(line) = operations.lines().find(|line| line.starts_with(line_start)) else {
        return Some(format!("no line starting {line_start:?}"));
    };
    if !line.contains(&expected) {
        return Some(format!("expected {expected:?} in {line:?}"));
    }
    None
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[test]
fn the_cost_table_follows_the_benchmarks_and_the_template() {
    let drift = cost_drift(
        &read("template.yaml"),
        &read("BENCHMARKS.md"),
        &read(OPERATIONS),
    );
    assert_eq!(drift, None, "{OPERATIONS}'s cost table");
}

// ---- the README -------------------------------------------------------

/// The README stays a door: short, the deploy steps near the top, the
/// picture of the flow in it; everything deeper lives in docs/.
#[test]
fn the_readme_is_short_with_the_quick_start_near_the_top_and_the_flow_drawn() {
    let readme = read("README.md");
    let lines: Vec<&str> = readme.lines().collect();
    assert!(lines.len() <= 250, "README.md has {} lines", lines.len());
    let quick_start = lines
        .iter()
        .position(|line| line.starts_with("## Quick start"))
        .expect("a quick start");
    assert!(
        quick_start + 1 < 80,
        "the quick start starts at line {}",
        quick_start + 1
    );
    assert!(readme.contains("```mermaid\nflowchart"));
}

// ---- links ------------------------------------------------------------

/// The Markdown files whose links must resolve.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = [
        "README.md",
        "CHANGELOG.md",
        "BENCHMARKS.md",
        "dev/README.md",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .map(|path| {
            path.strip_prefix(root())
                .expect("under the root")
                .to_path_buf()
        })
        .collect();
    pages.sort();
    docs.extend(pages);
    docs
}

/// Lines outside fenced code blocks.
fn prose(doc: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    doc.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

fn headings(doc: &str) -> impl Iterator<Item = (usize, String)> + '_ {
    prose(doc).filter_map(|line| {
        let level = line.bytes().take_while(|b| *b == b'#').count();
        let text = line.get(level..)?.strip_prefix(' ')?;
        (level > 0).then(|| (level, text.replace('`', "")))
    })
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn link_targets(doc: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(doc) {
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let Some(end) = rest.find(')') else { break };
            targets.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    targets
}

/// The links of `doc` (at `path`, relative to the root) that point to no
/// file, or to no heading of it; `read` returns a file's text, if any.
fn broken_links(path: &Path, doc: &str, read: &dyn Fn(&Path) -> Option<String>) -> Vec<String> {
    let dir = path.parent().unwrap_or(Path::new(""));
    link_targets(doc)
        .into_iter()
        .filter(|target| !target.contains("://") && !target.starts_with("mailto:"))
        .filter(|target| {
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let (target_path, text) = if file.is_empty() {
                (path.to_path_buf(), Some(doc.to_owned()))
            } else {
                let joined = normalise(&dir.join(file));
                let text = read(&joined);
                (joined, text)
            };
            let Some(text) = text else { return true };
            !anchor.is_empty()
                && target_path.extension().is_some_and(|e| e == "md")
                && !headings(&text).any(|(_, heading)| slug(&heading) == anchor)
        })
        .collect()
}

fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn read_relative(path: &Path) -> Option<String> {
    let full = root().join(path);
    if full.is_dir() {
        return Some(String::new());
    }
    std::fs::read_to_string(full).ok()
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut links = 0;
    for path in documents() {
        let doc = read(path.to_str().expect("a UTF-8 path"));
        links += link_targets(&doc).len();
        for target in broken_links(&path, &doc, &read_relative) {
            broken.push(format!("{}: {target}", path.display()));
        }
    }
    assert!(
        links > 50,
        "only {links} links found: is the scanner broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

// ---- each check, shown to fail ----------------------------------------

const DOC: &str = "\
# Configuration

## Template parameters

| Parameter | Default | Meaning |
|---|---|---|
| `Archive` | `create` | The bucket. |

## Settings

| Setting | Default | Meaning |
|---|---|---|
| `FunctionTimeout` | `120` | Seconds. |
| `SqsBatchSize` | `10` | Messages. |

## Environment variables

| Variable | Default | Meaning |
|---|---|---|
| `TERRA_S3_BUCKET` | | The bucket. |
| `TERRA_NEVER_READ` | | Documented, never read. |

Retired: `TERRA_OLD_NAME`.
";

const TEMPLATE: &str = "\
Parameters:
  Archive:
    Type: String
    Default: create
  Table:
    Type: String
    Default: create
Mappings:
  Defaults:
    Settings:
      # Seconds.
      FunctionTimeout: \"120\"
      FunctionMemory: \"512\"
      SqsBatchSize: \"10\"
  Timeouts:
    \"30\": { VisibilityTimeout: 480 }
Resources:
  QueueAlarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      Threshold: 0
  Queue:
    Type: AWS::SQS::Queue
";

#[test]
fn an_undocumented_or_unread_variable_fails() {
    let read: BTreeSet<String> = ["TERRA_S3_BUCKET", "TERRA_UNDOCUMENTED", "TERRA_OLD_NAME"]
        .map(str::to_owned)
        .into();
    let (undocumented, unread) = variable_drift(&read, DOC);
    assert_eq!(undocumented, ["TERRA_UNDOCUMENTED"]);
    assert_eq!(unread, ["TERRA_NEVER_READ"]);
}

#[test]
fn an_undocumented_parameter_fails() {
    let (undocumented, stale) = parameter_drift(&[TEMPLATE.to_owned()], DOC);
    assert_eq!(undocumented, ["Table"]);
    assert!(stale.is_empty());
}

#[test]
fn an_undocumented_or_stale_setting_fails() {
    let (undocumented, stale) = setting_drift(&[TEMPLATE.to_owned()], DOC);
    assert_eq!(undocumented, ["FunctionMemory"]);
    assert!(stale.is_empty());
    let (_, stale) = setting_drift(&[TEMPLATE.replace("      SqsBatchSize: \"10\"\n", "")], DOC);
    assert_eq!(stale, ["SqsBatchSize"]);
}

#[test]
fn an_alarm_without_a_runbook_entry_fails() {
    let template = [TEMPLATE.to_owned()];
    assert_eq!(
        alarms_without_a_runbook(&template, "## Runbook\n"),
        ["QueueAlarm"]
    );
    assert!(alarms_without_a_runbook(&template, "### Other / QueueAlarm\n").is_empty());
}

#[test]
fn a_cost_table_behind_the_benchmarks_fails() {
    let benchmarks = "### As deployed: Lambda's CPU share\n\n\
        | Memory | CPU share | Sinks | Store | Invocations | I/O lower bound | Wall time |\n\
        |---|---|---|---|---|---|---|\n\
        | 512 MB | 0.29 | S3 | null store | 30 | 50.0 ms | 55.0 ms |\n\
        | 512 MB | 0.29 | S3 + DynamoDB | null store | 30 | 50.0 ms | 56.2 ms |\n\
        | 1769 MB | 1.00 | S3 + DynamoDB | null store | 30 | 50.0 ms | 52.0 ms |\n\n\
        ### Lambda Managed Instances: invocations at once\n\n\
        | Sinks | Invocations at once | Steps | Wall time per step | Records per second |\n\
        |---|---:|---:|---:|---:|\n\
        | S3 + DynamoDB | 1 | 10 | 80.8 ms | 124 |\n\
        | S3 + DynamoDB | 8 | 10 | 224.2 ms | 357 |\n\
        | S3 | 8 | 10 | 100.0 ms | 800 |\n\n\
        ### Batch wall time\n\n| 512 MB | 0.29 | S3 + DynamoDB | null store | 30 | 50.0 ms | 99.0 ms |\n";
    let current = "| Lambda duration | 2 810 GB-s (100 000 × 56.2 ms × 0.5 GB) | $ | $ |\n\
        | Lambda duration at 1 769 MB | 8 983 GB-s (100 000 × 52 ms × 1.728 GB) | $ | $ |\n\
        | Managed Instances: instance time | 0.78 h of a 2-vCPU execution environment (1 000 000 ÷ 357 records per second) | $ | $ |\n";
    assert_eq!(cost_drift(TEMPLATE, benchmarks, current), None);
    let slower = benchmarks.replace("56.2 ms", "61.0 ms");
    assert!(cost_drift(TEMPLATE, &slower, current).is_some());
    let slower_at_one_vcpu = benchmarks.replace("52.0 ms", "53.0 ms");
    assert!(cost_drift(TEMPLATE, &slower_at_one_vcpu, current).is_some());
    let slower_at_once = benchmarks.replace("| 357 |", "| 300 |");
    assert!(cost_drift(TEMPLATE, &slower_at_once, current).is_some());
    let larger = TEMPLATE.replace("FunctionMemory: \"512\"", "FunctionMemory: \"1769\"");
    assert!(cost_drift(&larger, benchmarks, current).is_some());
}

#[test]
fn a_broken_link_or_anchor_fails() {
    let files = |path: &Path| match path.to_str() {
        Some("docs/kafka.md") => Some("# Kafka\n\n## How it answers\n".to_owned()),
        Some("README.md") => Some("# terra-sink\n".to_owned()),
        _ => None,
    };
    let doc = "## Terra's own-bucket mode\n\n\
        [ok](kafka.md#how-it-answers) [ok](../README.md) [ok](#terras-own-bucket-mode) \
        [ok](https://example.com/x) \
        [gone](missing.md) [no heading](kafka.md#how-it-asks) [no heading](#nowhere)\n\
        ```\n[in code](not-a-link.md)\n```\n";
    assert_eq!(
        broken_links(Path::new("docs/guide.md"), doc, &files),
        ["missing.md", "kafka.md#how-it-asks", "#nowhere"]
    );
}
